"""The temporal methods behind one interface: registry names at the place "clip", ratio 0 → identity, options."""
from __future__ import annotations

import pytest
import torch

from tests.merge.temporal.clips import frames_of, groups_of, moving_square
from tomviz.merge import registry
from tomviz.merge.request import MergeRequest
from tomviz.merge.temporal.methods import AllFrames, ClipInputs, get_clip_method

CLIP_METHODS = ("holitom", "fastvid", "dycoke", "framefusion", "rlt", "frame_drop", "tome", "random")


def clip_inputs(frames: int = 8, cut_at: int | None = None) -> tuple[ClipInputs, torch.Tensor]:
    clip = moving_square(frames=frames, cut_at=cut_at)
    square = clip.square.reshape(frames, 1, 8, 8).float()  # RLT reads pixels: the square, 4-pixel patches
    pixels = square.repeat_interleave(4, 2).repeat_interleave(4, 3).expand(-1, 3, -1, -1)  # [T, 3, 32, 32]
    inputs = ClipInputs(clip.tokens, clip.attention, clip.frame_features, pixels, patch_size=4)
    return inputs, clip.square


def test_every_temporal_method_is_registered_at_the_clip():
    # and tempme, which merges inside the encoder (tests/merge/temporal/test_tempme.py, tests/test_video_tempme.py)
    assert set(registry.names("clip")) == set(CLIP_METHODS) | {"tempme"}
    assert "holitom" not in registry.names("encoder") and "tome" in registry.names("encoder")
    with pytest.raises(ValueError, match="holitom works on a clip's frames, not in the encoder"):
        registry.entry("holitom", "encoder")


@pytest.mark.parametrize("name", CLIP_METHODS)
def test_ratio_zero_leaves_every_token_alone(name):
    inputs, _ = clip_inputs()
    reduction = get_clip_method(name).reduce(inputs, 0.0)
    reduction.validate()
    assert reduction.group.tolist() == list(range(8 * 64))
    assert torch.equal(reduction.tokens, inputs.tokens.reshape(8 * 64, -1))


@pytest.mark.parametrize("name", CLIP_METHODS)
def test_every_method_gives_a_valid_partition_that_removes_tokens(name):
    inputs, _ = clip_inputs()
    reduction = get_clip_method(name).reduce(inputs, 0.8)
    reduction.validate()
    assert reduction.num_kept < 8 * 64


@pytest.mark.parametrize("name", ("holitom", "framefusion"))  # the rules that compare the same position over time
def test_static_background_merges_across_frames_and_the_moving_square_does_not(name):
    inputs, square = clip_inputs()
    reduction = get_clip_method(name).reduce(inputs, 0.8)
    square_indices = set(square.flatten().nonzero().flatten().tolist())
    multi_frame_background = 0
    for members in groups_of(reduction):
        if members & square_indices:  # a group holding the square stays in one frame
            assert len(frames_of(members, 64)) == 1
        elif len(frames_of(members, 64)) > 1:
            multi_frame_background += 1
    assert multi_frame_background > 0


def test_holitom_windows_cut_at_a_hard_cut():
    inputs, _ = clip_inputs(cut_at=4)
    reduction = get_clip_method("holitom").reduce(inputs, 0.8)
    assert reduction.segments == ((0, 3), (4, 7))


def test_options_reach_the_rule_and_bad_ones_are_refused():
    assert get_clip_method("holitom", tau=0.5).tau == 0.5
    assert get_clip_method("fastvid", segments=3).segments == 3
    assert isinstance(get_clip_method("random", seed=3), AllFrames)
    with pytest.raises(ValueError, match="bad options for holitom"):
        get_clip_method("holitom", nosuch=1)
    request = MergeRequest(method="fastvid", ratio=0.9, place="clip", modality="video", method_options={"tau": 0.7})
    assert request.clip_method().tau == 0.7
    with pytest.raises(ValueError, match="does not run on image inputs"):
        MergeRequest(method="holitom", ratio=0.9, place="clip", modality="image").check()


def test_a_method_says_what_it_needs():
    inputs, _ = clip_inputs()
    with pytest.raises(ValueError, match="holitom needs attention"):
        get_clip_method("holitom").reduce(ClipInputs(inputs.tokens), 0.5)

