"""The tabs' handlers, called directly (no server, no browser)."""
from __future__ import annotations

import pytest

# The Scores and Bench tabs run on the tiny models that their packages' tests build.
from tests.bench.conftest import image_folder, tiny_classifier  # noqa: F401
from tests.scores.conftest import clip, clip_tokenizer, vit_classifier  # noqa: F401


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread, as the app runs (app.configure_torch_threads): on a busy 2-core CI machine two
    threads spinning against each other make every forward several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
