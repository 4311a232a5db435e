"""DyCoke's pair pruning, from the definition in KD-TAO/DyCoke (dd74634) llava/model/llava_arch.py dycole_ttm."""
from __future__ import annotations

import math

import torch

from tests.merge.temporal.clips import moving_square
from tomviz.merge.temporal.dycoke import dycoke


def clip_from_angles(angles: list[list[float]]) -> torch.Tensor:
    return torch.tensor([[[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in frame] for frame in angles])


def test_pairs_then_every_fourth_frame_hand_worked():
    tokens = clip_from_angles([
        [0, 0, 0, 0],  # frame 0: whole
        [10, 80, 40, 60],  # against frame 0: cos .98 .17 .77 .5 → keep positions 1, 3 (least similar first)
        [90, 5, 30, 0],  # step 2, against frame 0: cos 0 .996 .87 1 → keep 0, 2
        [90, 50, 30, 20],  # against frame 2: cos 1 .71 1 .94 → keep 1, 3
        [7, 7, 7, 7],  # an odd last frame: dropped
    ])
    reduction = dycoke(tokens, merging_ratio=0.5)  # keep int(0.5 * 4) = 2
    reduction.validate()
    assert reduction.position.tolist() == [0, 1, 2, 3, 5, 7, 8, 10, 13, 15]
    assert torch.equal(reduction.tokens, tokens.flatten(0, 1)[reduction.position])  # nothing averaged
    assert int((reduction.group < 0).sum()) == 20 - 10


def test_order_within_a_pruned_frame_is_least_similar_first():
    tokens = clip_from_angles([[0, 0, 0], [30, 80, 60]])
    assert dycoke(tokens, merging_ratio=0.0).position.tolist() == [0, 1, 2, 4, 5, 3]


def test_quirk_frame_30_of_32_is_never_pruned():
    tokens = torch.randn(32, 10, 4)
    kept = torch.bincount(dycoke(tokens).position // 10, minlength=32)  # keep int(0.3 * 10) = 3
    assert kept[30] == 10 and kept[26] == 3 and kept[28] == 10 and kept[31] == 3


def test_background_pruned_square_kept():
    clip = moving_square()
    reduction = dycoke(clip.tokens)  # keep int(0.3 * 64) = 19 of a pruned frame; 8 positions change per step
    reduction.validate()
    assert bool((reduction.group[clip.square.flatten()] >= 0).all()), "a square token was pruned"
    assert bool((~clip.square.flatten()[reduction.group < 0]).all())
