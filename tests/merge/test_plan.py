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


def test_custom_mean_weights_and_size_factors():
    """A plain mean of x and sizes ``size_dst + Σ size_src · factor`` (DiffRate's rule), worked by hand."""
    dst = torch.tensor([[0, 1, 1, PRUNED, 1]])
    x = torch.tensor([[[1.0], [2.0], [4.0], [8.0], [6.0]]])
    sizes = torch.tensor([[[1.0], [2.0], [3.0], [1.0], [5.0]]])
    factors = torch.tensor([[[1.0], [1.0], [0.5], [1.0], [0.2]]])
    plan = MergePlan(dst=dst, num_out=2, mean_weights=torch.ones(1, 5, 1), size_factors=factors)
    merged, new_sizes = plan.merge(x, sizes)
    assert torch.allclose(merged[0, :, 0], torch.tensor([1.0, (2 + 4 + 6) / 3]))
    assert torch.allclose(new_sizes[0, :, 0], torch.tensor([1.0, 2 + 3 * 0.5 + 5 * 0.2]))
    # only one of the two: the other stays ToMe's
    tome_sizes = MergePlan(dst=dst, num_out=2, mean_weights=torch.ones(1, 5, 1)).merge(x, sizes)[1]
    assert tome_sizes[0, :, 0].tolist() == [1.0, 10.0]
    tome_mean = MergePlan(dst=dst, num_out=2, size_factors=factors).merge(x, sizes)[0]
    assert torch.allclose(tome_mean[0, :, 0], torch.tensor([1.0, (4 + 12 + 30) / 10]))


def test_a_permutation_is_not_the_identity():
    plan = MergePlan(dst=torch.tensor([[0, 2, 1]]), num_out=3)
    assert not plan.is_identity
    assert plan.merge(torch.tensor([[[1.0], [2.0], [3.0]]]), None)[0][0, :, 0].tolist() == [1.0, 3.0, 2.0]


def test_representatives_are_the_destinations():
    """Tokens 1 and 4 merge into 2 (edges), 3 is pruned: output 1 stands at 2, the token that did not merge away,
    although 1 is its smallest member; without edges, each group's first member; a plan's ``keep`` wins."""
    from tomviz.merge.plan import MergeEdges

    dst = torch.tensor([[0, 1, 1, PRUNED, 1, 2]])
    edges = MergeEdges(src=torch.tensor([[1, 4]]), dst=torch.tensor([[2, 2]]), score=torch.ones(1, 2))
    assert MergePlan(dst=dst, num_out=3, edges=edges).representatives().tolist() == [[0, 2, 5]]
    assert MergePlan(dst=dst, num_out=3).representatives().tolist() == [[0, 1, 5]]
    keep = torch.tensor([[0, 4, 5]])
    assert MergePlan(dst=dst, num_out=3, edges=edges, keep=keep).representatives().tolist() == [[0, 4, 5]]
