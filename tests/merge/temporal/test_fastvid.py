"""FastVID, from the definitions in LunarShen/FastVID (a40a109) modeling_qwen2.py Qwen2Model.forward."""
from __future__ import annotations

import math

import torch

from tests.merge.temporal.clips import frames_of, groups_of, moving_square
from tomviz.merge.temporal.fastvid import anchor_counts, dynamic_segments, fastvid


def features_with_steps(similarities: list[float]) -> torch.Tensor:
    """``[T, 2]`` unit vectors whose consecutive cosines are ``similarities``."""
    angle, angles = 0.0, [0.0]
    for s in similarities:
        angle += math.acos(s)
        angles.append(angle)
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles])


def test_dynamic_segments_hand_worked():
    features = features_with_steps([0.99, 0.95, 0.5, 0.99, 0.98])
    assert dynamic_segments(features, 2, 0.9) == [(0, 2), (3, 5)]  # the one smallest step
    assert dynamic_segments(features, 2, 0.97) == [(0, 1), (2, 2), (3, 5)]  # plus every step under τ
    assert dynamic_segments(features, 8, 0.0) == [(i, i) for i in range(6)]  # c - 1 capped at the 5 steps


def test_anchor_counts_hand_worked():
    # s = 5, p = 4: (2 * 5) // ceil(5 / 4) = 5 on frames 4 and 0 (counted from the end)
    assert anchor_counts([(0, 4)], 2, 4) == [5, 0, 0, 0, 5]
    # a one-frame segment keeps the context; s = 2: 6 on its last frame only
    assert anchor_counts([(0, 0), (1, 2)], 3, 4) == [3, 0, 6]


def test_salient_square_alone_background_merged_within_segments():
    clip = moving_square(cut_at=4)
    reduction = fastvid(clip.tokens, clip.attention, clip.frame_features, retention=0.25, num_segments=2, tau=0.5)
    reduction.validate()
    assert reduction.segments == ((0, 3), (4, 7))
    # per frame: retain int(64 * 0.25) = 16, salient 16 - int(6.4) = 10, context 6; s = 4: 24 anchors on frame 3 / 7
    assert reduction.num_kept == 8 * 10 + 2 * 24
    assert bool((reduction.group >= 0).all()), "with anchors nothing is dropped"
    square = clip.square.flatten()
    assert bool((reduction.group_sizes()[reduction.group[square]] == 1).all()), "a salient square token merged"
    spans = [frames_of(members, 64) for members in groups_of(reduction)]
    assert all(max(f) < 4 or min(f) >= 4 for f in spans), "a group crosses the segment boundary"
    assert sum(len(f) == 4 for f in spans) >= 12, "background anchors should gather all four frames"
    assert torch.equal(reduction.position, reduction.position.sort().values)  # input order, as the original


def test_no_context_drops_the_other_tokens():
    clip = moving_square()
    reduction = fastvid(clip.tokens, clip.attention, clip.frame_features, retention=0.02)  # retain 1, context 0
    reduction.validate()
    assert reduction.num_kept == 8 and int((reduction.group >= 0).sum()) == 8


def test_attention_and_frame_features_shapes_are_checked():
    import pytest

    tokens, features = torch.randn(3, 8, 4), torch.randn(3, 5)
    with pytest.raises(ValueError, match=r"attention must be .*\[3, 8\], got \[3, 7\]"):
        fastvid(tokens, torch.rand(3, 7), features)
    with pytest.raises(ValueError, match=r"attention must be .*got \[8\]"):
        fastvid(tokens, torch.rand(8), features)
    with pytest.raises(ValueError, match=r"frame features must be \[T, C'\] with T = 3"):
        fastvid(tokens, torch.rand(3, 8), torch.randn(2, 5))
