"""TempMe through tomviz.inspect on a clip: one trace record per encoder block, valid partitions at every layer,
ratio 0 equal to the unpatched encoder, a static background merging across frames, the strip at any layer."""
from __future__ import annotations

import itertools
import numpy as np
import pytest
import torch

import tomviz
from tests.inputs.clips import patch_mask, square_clip
from tomviz.render.video import frame_strip
from tomviz.trace import Trace


@pytest.fixture(scope="module")
def square():
    return square_clip()  # 8 frames of 32², a 2 × 2-patch square moving one patch a frame


@pytest.fixture(scope="module")
def tempme_half(tiny_frames_model, square):
    return tomviz.inspect(tiny_frames_model, square[0], method="tempme", ratio=0.5)


def test_one_record_per_block_and_a_valid_partition_at_every_layer(tempme_half):
    trace = tempme_half.trace
    assert trace.num_layers == 4 and trace.meta["stages"] == ["layer 0", "layer 1", "layer 2", "layer 3"]
    assert trace.frame_grid == (8, 8, 8) and trace.num_protected == 0
    counts = trace.token_counts()
    assert counts[0] == 512 and all(a >= b for a, b in itertools.pairwise(counts))
    assert counts[-1] / 512 == pytest.approx(0.5, abs=0.02)
    frame = np.arange(512) // 64
    for layer in range(trace.num_layers):
        groups, sizes = trace.groups(layer), trace.sizes(layer)
        assert groups.shape == (512,) and groups.min() >= 0 and groups.max() == sizes.size - 1
        assert np.array_equal(np.bincount(groups, minlength=sizes.size), sizes)  # every group has members
        # tiny encoder (4 blocks): frames joined at layers 0, 1, 2 in groups of 2, 2, 2 → 4, 2, 1 sequences
        joined = 2 ** (layer + 1) if layer < 3 else 8
        clip_of = frame // joined
        assert all(len(set(clip_of[groups == g])) == 1 for g in range(sizes.size))  # a group stays in its clip
    assert np.array_equal(trace.groups(-1), tempme_half.reduction.group.numpy())
    assert trace.tokens_per_frame().sum() == counts[-1]
    tempme_half.reduction.validate()
    assert Trace.from_dict(trace.to_dict()).num_layers == 4


def test_ratio_zero_equals_the_unpatched_encoder(tiny_frames_model, square):
    result = tomviz.inspect(tiny_frames_model, square[0], method="tempme", ratio=0.0)
    assert result.token_counts() == [512] * 5 and result.trace.groups(-1).tolist() == list(range(512))
    with torch.inference_mode():  # outside any merge state the patched model runs its original forward
        plain = tiny_frames_model.model(pixel_values=result.features.pixels).last_hidden_state[:, 1:]  # [T, N, C]
    assert torch.allclose(result.reduction.tokens, plain.reshape(512, -1), atol=1e-4)
    assert result.fidelity == pytest.approx(1.0, abs=1e-6)


def test_a_static_background_merges_across_frames_and_the_moving_square_stays_apart(tempme_half, square):
    moving = patch_mask(square[1], 4)  # [512] the square's tokens
    groups = tempme_half.trace.groups(-1)
    place = np.arange(512) % 64
    same_place = np.array([np.unique(place[groups == g]).size < (groups == g).sum() for g in range(groups.max() + 1)])
    assert same_place[groups[~moving]].mean() > 0.6  # most background tokens share a group with their own place
    mixed = [g for g in np.unique(groups[moving]) if (~moving[groups == g]).any()]
    assert mixed == []  # the square never merges into the background it passes over


def test_the_authors_scale_and_bad_options(tiny_frames_model, square):
    result = tomviz.inspect(tiny_frames_model, square[0], method="tempme", ratio=0.5, method_options={"scale": 1.0})
    steps = result.trace.meta["schedule"]
    assert len(steps) == 4 and sum(steps) == 512 - result.token_counts()[-1]  # the 8 CLS tokens all stay
    with pytest.raises(ValueError, match="multiply to the 8 frames"):
        tomviz.inspect(tiny_frames_model, square[0], method="tempme", ratio=0.5, method_options={"groups": [2, 2, 3]})


def test_the_strip_draws_any_layer(tempme_half):
    frames, trace = tempme_half.video.frames, tempme_half.trace
    first, last = frame_strip(frames, trace, stage=0), frame_strip(frames, trace, stage=-1)
    assert first.size == last.size and first.tobytes() != last.tobytes()
    token = int(np.argmax(trace.sizes(-1)[trace.groups(-1)]))  # a token of the largest group
    assert frame_strip(frames, trace, stage=1, token=token).size == first.size
