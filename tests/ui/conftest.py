"""The tabs' handlers, called directly (no server, no browser)."""
from __future__ import annotations

# The Scores and Bench tabs run on the tiny models that their packages' tests build.
from tests.bench.conftest import image_folder, tiny_classifier  # noqa: F401
from tests.scores.conftest import clip, clip_tokenizer, photo, vit_classifier  # noqa: F401

