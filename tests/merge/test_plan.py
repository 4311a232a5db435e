from __future__ import annotations

import torch

from tomviz.merge.plan import PRUNED, MergePlan


def test_merge_unmerge_round_trip_and_pruning():
    plan = MergePlan(dst=torch.tensor([[0, 1, 1, PRUNED, 2]]), num_out=3)
    x = torch.tensor([[[1.0], [2.0], [4.0], [8.0], [5.0]]])
    sizes = torch.tensor([[[1.0], [1.0], [3.0], [1.0], [2.0]]])
    merged, new_sizes = plan.merge(x, sizes)
    assert merged[0, :, 0].tolist() == [1.0, (2 + 12) / 4, 5.0]
    assert new_sizes[0, :, 0].tolist() == [1.0, 4.0, 2.0]
    back = plan.unmerge(merged)
    assert back[0, :, 0].tolist() == [1.0, 3.5, 3.5, 0.0, 5.0]
    # merging an already-merged identical pair changes nothing
    same = MergePlan(dst=torch.tensor([[0, 1, 1]]), num_out=2).merge(torch.ones(1, 3, 2), None)[0]
    assert torch.equal(same, torch.ones(1, 2, 2))


def test_compose_and_identity():
    first = MergePlan(dst=torch.tensor([[0, 1, 1, 2]]), num_out=3)
    second = MergePlan(dst=torch.tensor([[0, PRUNED, 1]]), num_out=2)
    source = torch.arange(4).unsqueeze(0)
    assert second.compose(first.compose(source)).tolist() == [[0, -1, -1, 1]]
    assert MergePlan.identity(2, 5).is_identity
    assert first.reduce_any(torch.tensor([[False, True, False, False]])).tolist() == [[False, True, False]]
