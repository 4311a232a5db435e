"""A tiny random DINOv2 (32 x 32 input, 4-pixel patches: 8 x 8 tokens per frame) and a synthetic clip file."""
from __future__ import annotations

import pytest

from tests.inputs.test_video import write_clip
from tests.video.clips import square_clip


@pytest.fixture(scope="session")
def tiny_frames_model():
    import tomviz
    from tests import tiny

    return tomviz.load(tiny.dinov2(seed=0, patch_size=4))


@pytest.fixture
def square_mp4(tmp_path):
    """A 12-frame mp4 of the moving square (lossy: the texture is not bit-exact after decoding)."""
    frames, _ = square_clip(frames=12, step=2)
    path = tmp_path / "square.mp4"
    write_clip(path, frames)
    return path
