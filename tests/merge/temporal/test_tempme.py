"""TempMe's merging as tensor math: the authors' counts, the clip joins and a cross-clip merge worked by hand.

The fixtures follow LunarShen/TempMe @e624930: ``tvr/models/modeling.py`` (``get_video_feat``: the counts of
each layer) and ``tvr/models/module_tome_patch.py`` (``ToMeBlock.forward``: every member's CLS first, then the
members' other tokens; ``bipartite_soft_matching`` with the CLS tokens left out of the split).
"""
from __future__ import annotations

import pytest
import torch

from tomviz.merge.base import LayerStep, MergeInputs
from tomviz.merge.engine import MergeConfig, MergeState
from tomviz.merge.temporal.methods import get_clip_method
from tomviz.merge.temporal.tempme import (
    AUTHORS_GROUPS,
    AUTHORS_MERGE_LAYERS,
    TempMeMerge,
    TempMeSettings,
    clip_order,
    default_groups,
    default_merge_layers,
    default_settings,
    join_clips,
    join_source,
    settings_for_ratio,
    tempme_steps,
    tokens_out,
)


def test_the_authors_schedule_takes_600_tokens_to_97():
    """ViT-B/32, 12 frames × 50 tokens; counted by hand from get_video_feat (int() truncates):
    layer 8: int(34·2·0.3) = 20, int((68 − 20)·0.1) = 4 → 44; layer 9: int(88·0.3) = 26, int(62·0.1) = 6 → 56;
    layer 10: int(168·0.3) = 50, int(118·0.1) = 11 → 107; layer 11: int(107·0.1) = 10 → 97."""
    settings = default_settings(12, 50, 1, 12)
    assert settings == TempMeSettings(2, 0.3, 0.1, (8, 9, 10), (2, 2, 3))
    assert (settings.merge_layers, settings.groups) == (AUTHORS_MERGE_LAYERS, AUTHORS_GROUPS)
    steps = tempme_steps(settings, 12, 50, 1, 12)
    assert steps[:8] == [LayerStep(1, 0, 2)] * 8  # 33 patches a frame at the first join: odd, nothing added
    assert steps[8:] == [LayerStep(2, 20, 4), LayerStep(2, 26, 6), LayerStep(3, 50, 11), LayerStep(1, 0, 10)]
    assert tokens_out(steps, 12, 50) == 97


@pytest.mark.parametrize("frames, groups", [(12, (2, 2, 3)), (16, (2, 2, 4)), (8, (2, 2, 2)), (6, (2, 1, 3)),
                                            (4, (2, 1, 2)), (1, (1, 1, 1)), (5, (1, 1, 5))])
def test_default_groups_join_the_whole_clip_by_the_last_clip_layer(frames, groups):
    assert default_groups(frames) == groups


def test_defaults_scale_with_dinov2s_tokens_and_the_layers():
    assert default_merge_layers(12) == (8, 9, 10) and default_merge_layers(4) == (0, 1, 2)
    settings = default_settings(16, 257, 1, 12)  # DINOv2-S/14: CLS + 16 × 16 patches
    assert settings.r_early == 10 and settings.groups == (2, 2, 4)
    steps = tempme_steps(settings, 16, 257, 1, 12)
    assert [step.after for step in steps[:8]] == [10] * 7 + [11]  # 256 − 81 = 175 patches: odd at the first join


def test_clip_order_puts_every_members_cls_first():
    # members [c0 a0 b0] and [c1 a1 b1] (flattened 0..5) → [c0 c1 a0 b0 a1 b1]
    assert clip_order(2, 3, 1).tolist() == [0, 3, 1, 2, 4, 5]
    x = torch.arange(12.0).view(4, 3, 1)  # four one-frame sequences
    assert join_clips(x, 2, 1)[:, :, 0].tolist() == [[0, 3, 1, 2, 4, 5], [6, 9, 7, 8, 10, 11]]
    # each frame's input tokens (0, 1, 2) sit at slots 0, 1, 2 of their own sequence; joined: c1 moves to slot 1
    source = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 2, -1], [1, 1, 0]])
    assert join_source(source, 2, 3, 1).tolist() == [[0, 2, 3, 1, 4, 5], [0, 3, -1, 4, 4, 1]]
    with pytest.raises(ValueError, match="groups of 3"):
        join_clips(x, 3, 1)


def _two_frames() -> torch.Tensor:
    """Frame 0 = [c0, a0, a1, a2], frame 1 = [c1, b0, b1, b2], 2-D features (CLS far from everything)."""
    return torch.tensor([[[0.0, -5.0], [1, 0], [0, 1], [1, -1]],
                         [[0.0, -5.0], [1, 0.1], [-1, 0.2], [-1, 0]]])


def test_the_cross_clip_merge_worked_by_hand():
    """Joined: [c0 c1 a0 a1 a2 b0 b1 b2]; A = even positions past the 2 CLS = a0, a2, b1; B = a1, b0, b2.
    Proposals (cosine): a0→b0 0.995, b1→b2 0.981, a2→b0 0.633. r = 1: a0 (frame 0) merges into b0, the same
    place in frame 1. Output: CLS, kept A ascending (a2, b1), then B (a1, b0, b2)."""
    joined = join_clips(_two_frames(), 2, 1)
    method = TempMeMerge(scale=1.0)
    plan = method.plan_before_attention(MergeInputs(metric=joined, num_protected=2, hidden=joined), 1)
    assert plan.dst[0].tolist() == [0, 1, 5, 4, 2, 5, 3, 6]
    merged, sizes = plan.merge(joined, None)
    assert merged[0, 5].tolist() == pytest.approx([1.0, 0.05]) and sizes[0, :, 0].tolist() == [1, 1, 1, 1, 1, 2, 1]
    plan = method.plan_before_attention(MergeInputs(metric=joined, num_protected=2, hidden=joined), 2)
    assert plan.dst[0].tolist() == [0, 1, 4, 3, 2, 4, 5, 5]  # and b1 (frame 1) into b2: [c0 c1 a2 a1 b0* b2*]


def test_the_engine_joins_frames_and_tracks_every_input_token():
    """Two frames through the engine's before_attention with the hand-worked fixture: one sequence remains and
    the trace maps the 8 input tokens (frame-major) to it."""
    x = _two_frames()
    method = TempMeMerge(scale=1.0, r_early=0, merge_layers=(0,), groups=(2,), cross=0.25, within=0.0)
    assert method.layer_steps(2, 4, 1, 1) == [LayerStep(group=2, before=2, after=0)]  # int(8 · 0.25) = 2
    state = MergeState(MergeConfig(method=method, trace=True), num_protected=1, num_layers=1)
    state.begin(x, None)
    out = state.before_attention(0, x)
    assert out.shape == (1, 6, 2) and state.num_protected == 2
    out = state.after_attention(0, out, out, None, 1)
    layer = state.trace().layers[0]
    assert layer.source.tolist() == [0, 4, 3, 2, 1, 4, 5, 5] and layer.sizes.tolist() == [1, 1, 1, 1, 2, 2]
    assert state.trace().meta["schedule"] == [2] and layer.num_tokens_in == 8


def test_a_ratio_picks_the_scale_whose_counts_come_nearest():
    base = default_settings(16, 257, 1, 12)
    for ratio in (0.2, 0.5, 0.8):
        steps = tempme_steps(settings_for_ratio(ratio, base, 16, 257, 1, 12), 16, 257, 1, 12)
        removed = 16 * 257 - tokens_out(steps, 16, 257)
        assert removed / (16 * 256) == pytest.approx(ratio, abs=0.01)
    assert TempMeMerge(ratio=0.0).layer_steps(16, 257, 1, 12) == [LayerStep()] * 12  # nothing joined either


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="multiply to the 12 frames"):
        tempme_steps(TempMeSettings(2, 0.3, 0.1, (8, 9, 10), (2, 2, 2)), 12, 50, 1, 12)
    with pytest.raises(ValueError, match="must lie in 0..11"):
        tempme_steps(TempMeSettings(2, 0.3, 0.1, (9, 10, 12), (2, 2, 3)), 12, 50, 1, 12)
    with pytest.raises(ValueError, match="shares in"):
        tempme_steps(TempMeSettings(2, 0.6, 0.1, (8, 9, 10), (2, 2, 3)), 12, 50, 1, 12)


def test_the_clip_method_runs_only_inside_an_encoder():
    method = get_clip_method("tempme", groups=[2, 2, 3])
    assert method.in_encoder and method.encoder_method(0.5).overrides == {"groups": (2, 2, 3)}
    with pytest.raises(ValueError, match="inside the encoder"):
        method.reduce(type("Clip", (), {"tokens": torch.zeros(2, 3, 4)})(), 0.5)


def test_odd_join_off_keeps_the_authors_constant_r():
    settings = TempMeSettings(10, 0.3, 0.1, (8, 9, 10), (2, 2, 4), odd_join=False)
    assert [step.after for step in tempme_steps(settings, 16, 257, 1, 12)[:8]] == [10] * 8


def test_sources_and_anchors_follow_the_joins():
    """Four frames (CLS + 4 tokens): ToMe in each frame at layer 0, then all four joined at layer 1 and 4 merged
    across them. Every output token's anchor (the input it stands at) is one of its own members."""
    x = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0))
    method = TempMeMerge(scale=1.0, r_early=1, merge_layers=(1,), groups=(4,), cross=0.25, within=0.0, odd_join=False)
    state = MergeState(MergeConfig(method=method, trace=True), num_protected=1, num_layers=2)
    state.begin(x, None)
    for layer in range(2):
        x = state.before_attention(layer, x)
        x = state.after_attention(layer, x, x, None, 1)
    assert x.shape == (1, 12, 3) and state.trace().meta["schedule"] == [4, 4]
    source, anchors = state.source[0], state.anchors[0]  # [20] input → token, [12] token → input
    assert torch.equal(source[anchors], torch.arange(12))
    assert torch.equal(torch.from_numpy(state.trace().layers[-1].source).long(), source)
