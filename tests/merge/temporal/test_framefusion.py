"""FrameFusion's first-layer rule, from the definition in thu-nics/FrameFusion (fbec1d2) framefusion/main.py."""
from __future__ import annotations

import math

import torch

from tests.merge.temporal.clips import frames_of, groups_of, moving_square
from tomviz.merge.temporal.framefusion import framefusion, merge_budget


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def clip_from_angles(angles: list[list[float]]) -> torch.Tensor:
    """``[T, N, 2]`` unit vectors from angles ``[T][N]`` in degrees."""
    return torch.tensor([[unit(a) for a in frame] for frame in angles])


# position 0: 0°, 6°, 90°, 84° → fuses at frames 1 and 3; position 1: 0°, 90°, 90°, 87° → fuses at 2 and 3
ANGLES = [[0, 0], [6, 90], [90, 90], [84, 87]]


def test_runs_fuse_into_the_token_before_them():
    tokens = clip_from_angles(ANGLES)
    reduction = framefusion(tokens)  # 4 of 8 qualify: under the 0.7 cap
    reduction.validate()
    # frame-major index t * 2 + n; kept: (f0,p0) (f0,p1) (f1,p1) (f2,p0), in sequence order
    assert reduction.position.tolist() == [0, 1, 3, 4]
    assert reduction.group.tolist() == [0, 1, 0, 2, 3, 2, 3, 2]
    flat = tokens.flatten(0, 1)
    expected = torch.stack([flat[[0, 2]].mean(0), flat[1], flat[[3, 5, 7]].mean(0), flat[[4, 6]].mean(0)])
    assert torch.allclose(reduction.tokens, expected)


def test_budget_keeps_only_the_most_similar():
    assert merge_budget(0.3) == 0.7 and merge_budget(1.5) == 0.0
    tokens = clip_from_angles(ANGLES)
    reduction = framefusion(tokens, cost=0.8)  # cap 0.2: int(0.2 * 8) = 1 fuses, the identical pair (f2,p1)
    reduction.validate()
    assert reduction.num_kept == 7
    assert [sorted(g) for g in groups_of(reduction) if len(g) > 1] == [[3, 5]]


def test_static_background_fuses_across_frames_the_square_does_not():
    clip = moving_square()
    reduction = framefusion(clip.tokens, cost=0.1)
    reduction.validate()
    square = clip.square.flatten()
    ever_square = clip.square.any(dim=0)
    for members in groups_of(reduction):
        positions = {i % 64 for i in members}
        assert len(positions) == 1, "FrameFusion merges only the same position"
        assert len({bool(square[i]) for i in members}) == 1, "square and background in one group"
        if bool(square[min(members)]):
            assert len(frames_of(members, 64)) == 1, "the moving square fused across frames"
        elif not bool(ever_square[positions.pop()]):
            assert frames_of(members, 64) == set(range(8)), "untouched background should fuse over the clip"


def test_nothing_fuses_across_a_hard_cut():
    clip = moving_square(cut_at=4)
    reduction = framefusion(clip.tokens, cost=0.1)
    for members in groups_of(reduction):
        frames = frames_of(members, 64)
        assert max(frames) < 4 or min(frames) >= 4
