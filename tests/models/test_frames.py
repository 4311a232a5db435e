"""A clip's frames through an image encoder: shapes, the feature block, CLS attention over the patches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.inputs.clips import square_clip
from tomviz.models.frames import encode_frames, middle_block


def test_per_frame_outputs(tiny_frames_model):
    frames, _ = square_clip(frames=3)
    features = encode_frames(tiny_frames_model, frames)
    assert features.feature_layer == middle_block(4) == 2
    assert features.tokens.shape == (3, 64, 32) and features.final.shape == (3, 64, 32)
    assert features.attention.shape == (3, 64) and features.frame_features.shape == (3, 32)
    assert features.pixels.shape == (3, 3, 32, 32) and features.patch_grid == (8, 8) and features.patch_size == 4
    assert bool((features.attention.sum(1) < 1).all())  # CLS attends to itself too: the patches' share is below 1
    with torch.inference_mode():  # the feature block's output and the final tokens are the model's own
        out = tiny_frames_model.model(pixel_values=features.pixels[:1], output_hidden_states=True)
    assert torch.allclose(features.tokens[0], out.hidden_states[3][0, 1:], atol=1e-5)  # hidden_states[0] = embeddings
    assert torch.allclose(features.final[0], out.last_hidden_state[0, 1:], atol=1e-5)


def test_identical_frames_give_identical_tokens(tiny_frames_model):
    frames = np.repeat(square_clip(frames=1)[0], 2, axis=0)
    features = encode_frames(tiny_frames_model, frames)
    assert torch.equal(features.tokens[0], features.tokens[1])


def test_a_block_out_of_range_is_refused(tiny_frames_model):
    with pytest.raises(ValueError, match="feature_layer must be in 0..3"):
        encode_frames(tiny_frames_model, square_clip(frames=1)[0], feature_layer=4)
