"""Merging within segments (tomviz/merge/segments.py): shares of r, contiguous runs, and joined plans equal to the
method run on each segment alone."""
from __future__ import annotations

import pytest
import torch

from tomviz.merge.base import MergeInputs
from tomviz.merge.plan import PRUNED, MergePlan
from tomviz.merge.segments import join_plans, plan_within_segments, segment_runs, share_removal
from tomviz.merge.tome import ToMe


def test_runs_and_non_contiguous_segments():
    assert segment_runs(torch.tensor([3, 3, 0, 0, 0, 7])) == [(0, 2), (2, 5), (5, 6)]
    with pytest.raises(ValueError, match="contiguous"):
        segment_runs(torch.tensor([0, 1, 0]))


def test_shares_follow_lengths_and_capacities():
    """8 of 32 tokens over lengths 16, 8, 8: 4, 2, 2. Remainders: 5 over 3 x 4 tokens: 5/3 each, the first two
    remainders win (ties by order). 6 over 12, 2, 2: 4.5, 0.75, 0.75 → 4, 1, 1; a segment full at 1 passes the
    rest on (6 over 2, 12 with capacities 1, 6 → 1, 5); r above every capacity is capped."""
    assert share_removal(8, [16, 8, 8], [8, 4, 4]) == [4, 2, 2]
    assert share_removal(5, [4, 4, 4], [2, 2, 2]) == [2, 2, 1]
    assert share_removal(6, [12, 2, 2], [6, 1, 1]) == [4, 1, 1]
    assert share_removal(6, [2, 12], [1, 6]) == [1, 5]
    assert share_removal(50, [4, 4], [2, 2]) == [2, 2]
    assert share_removal(0, [4, 4], [2, 2]) == [0, 0]


def test_plan_within_segments_equals_each_segment_alone():
    torch.manual_seed(0)
    metric, hidden = torch.randn(1, 20, 6), torch.randn(1, 20, 5)
    segments = torch.tensor([0] * 8 + [1] * 4 + [2] * 8)
    plan = plan_within_segments(ToMe(), MergeInputs(metric=metric, hidden=hidden, num_protected=0), 10, segments)
    shares = [4, 2, 4]
    merged, sizes = plan.merge(hidden, None)
    expected, out = [], 0
    for (start, end), r in zip([(0, 8), (8, 12), (12, 20)], shares):
        alone = ToMe().plan(MergeInputs(metric=metric[:, start:end], num_protected=0), r)
        expected.append(alone.merge(hidden[:, start:end], None)[0])
        members = plan.dst[0, start:end]
        assert bool((members >= out).all()) and bool((members < out + alone.num_out).all())  # no group leaves it
        out += alone.num_out
    assert plan.num_out == 10 == out
    assert torch.allclose(merged, torch.cat(expected, 1))
    assert torch.equal(plan.keep.gather(1, plan.dst), plan.representatives().gather(1, plan.dst))
    unmerged = plan.unmerge(merged)  # every token back from its group: the groups are a partition
    assert unmerged.shape == hidden.shape and float(sizes.sum()) == 20


def test_join_keeps_pruning_and_identity():
    pruned = MergePlan(dst=torch.tensor([[0, PRUNED, 1]]), num_out=2)
    joined = join_plans([MergePlan.identity(1, 2), pruned], [None, None])
    assert joined.dst.tolist() == [[0, 1, 2, PRUNED, 3]] and joined.num_out == 4
    with pytest.raises(ValueError, match="one sequence"):
        plan_within_segments(ToMe(), MergeInputs(metric=torch.randn(2, 4, 3), num_protected=0), 1, torch.zeros(4))
