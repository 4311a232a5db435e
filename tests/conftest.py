"""Shared fixtures: tiny randomly initialised transformers models (no network), and the ``slow`` marker's rules."""
from __future__ import annotations

import pytest
import torch

def pytest_configure(config):
    """One torch thread for the whole run, as the app serves (app.configure_torch_threads). The models here are
    tiny; on a shared 2-core machine two threads waiting for each other made the model tests 3-6x slower
    (tests/scores/test_model_scores.py + tests/merge/test_diffrate.py + tests/models/test_adapters.py under a
    load of 3: 5-8 s with one thread, 15-31 s with two)."""
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """``slow``: besides the tests marked in their modules, every test that uses the launched app (``app_url``,
    also behind ``client``: the app server, the browser tests)."""
    for item in items:
        if "app_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_vit_classifier():
    """A random 4-layer, 32-wide ViT classifier (10 classes) on 32 x 32 images, 4 x 4 patches: 65 tokens."""
    from tests import tiny

    return tiny.vit(classifier=10, num_attention_heads=2, patch_size=4, seed=0)


@pytest.fixture(scope="session")
def tiny_frames_model():
    """A tiny random DINOv2 as a loaded model (32 x 32 input, 4-pixel patches: 8 x 8 tokens a frame, 4 blocks)."""
    import tomviz
    from tests import tiny

    return tomviz.load(tiny.dinov2(seed=0, patch_size=4))


@pytest.fixture
def square_mp4(tmp_path):
    """A 12-frame mp4 of a white square moving over a static texture (lossy: not bit-exact after decoding)."""
    from tests.inputs.clips import square_clip
    from tests.inputs.test_video import write_clip

    frames, _ = square_clip(frames=12, step=2)
    path = tmp_path / "square.mp4"
    write_clip(path, frames)
    return path
