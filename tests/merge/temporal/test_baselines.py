"""Frame dropping, and ToMe / random matching over all frames' tokens."""
from __future__ import annotations

import pytest
import torch

from tests.merge.temporal.clips import moving_square
from tomviz.merge.temporal.base import mean_by_group
from tomviz.merge.temporal.baselines import drop_frames, random_all_frames, tome_all_frames


def test_drop_frames_keeps_evenly_spaced_whole_frames():
    tokens = torch.randn(8, 3, 4)
    reduction = drop_frames(tokens, 0.5)  # round(linspace(0, 7, 4)) = 0, 2, 5, 7
    reduction.validate()
    kept_frames = sorted({int(p) // 3 for p in reduction.position})
    assert kept_frames == [0, 2, 5, 7]
    assert torch.equal(reduction.tokens, tokens[[0, 2, 5, 7]].flatten(0, 1))
    assert int((reduction.group >= 0).sum()) == 12
    assert drop_frames(tokens, 0.0).position.tolist() == [0, 1, 2]  # at least one frame
    with pytest.raises(ValueError, match="retain"):
        drop_frames(tokens, 1.5)


def test_tome_all_frames_hand_worked():
    # frame 0 = [x, y], frame 1 = [y', x']; flattened A = {x, y'} (even), B = {y, x'} (odd)
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    tokens = torch.stack([torch.stack([x, y]), torch.stack([y + 0.1 * x, x + 0.1 * y])])  # [2, 2, 2]
    reduction = tome_all_frames(tokens, 0.5)  # r = 2: x -> x', y' -> y, across the frames
    reduction.validate()
    assert reduction.group.tolist() == [1, 0, 0, 1]  # output: the B tokens in order, y then x'
    assert reduction.position.tolist() == [1, 3]
    assert torch.allclose(reduction.tokens, torch.stack([(y + y + 0.1 * x) / 2, (x + x + 0.1 * y) / 2]))


@pytest.mark.parametrize("retain", [0.9, 0.5, 0.1, 0.01])
def test_bipartite_rounds_reach_the_target_and_average_members(retain):
    clip = moving_square()
    for reduction in (tome_all_frames(clip.tokens, retain), random_all_frames(clip.tokens, retain, seed=3)):
        reduction.validate()
        assert reduction.num_kept == max(1, round(512 * retain))
        assert bool((reduction.group >= 0).all())  # merging only
        # size-weighted means composed over the rounds = the plain mean of each group's members
        expected = mean_by_group(clip.tokens.flatten(0, 1), reduction.group, reduction.num_kept)
        assert torch.allclose(reduction.tokens, expected, atol=1e-5)


def test_tome_merges_the_most_similar_first():
    clip = moving_square()
    reduction = tome_all_frames(clip.tokens, 1 - 15 / 512)  # one round, r = 15 < 16 square tokens on the A side
    square = clip.square.flatten()
    for members in [reduction.group == slot for slot in range(reduction.num_kept)]:
        if int(members.sum()) > 1:
            assert bool(square[members].all()), "a background token merged while square pairs were left"


def test_random_is_seeded():
    tokens = moving_square().tokens
    first, again, other = (random_all_frames(tokens, 0.3, seed=s) for s in (1, 1, 2))
    assert torch.equal(first.group, again.group)
    assert not torch.equal(first.group, other.group)
