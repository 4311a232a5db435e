import torch

from tomviz.merge import MergeInputs, get_method
from tomviz.merge.random_ import random_split
from tests.merge.helpers import check_plan


def test_split_is_seeded_half_and_keeps_protected_on_a():
    a = random_split(11, 1, seed=3)
    assert a[0] and int(a[1:].sum()) == 5
    assert torch.equal(a, random_split(11, 1, seed=3))
    assert not torch.equal(a, random_split(11, 1, seed=4))


def test_plan_merges_r_and_depends_on_layer_seed():
    torch.manual_seed(0)
    metric = torch.randn(2, 17, 8)
    method = get_method("random", seed=1)
    plans = [method.plan(MergeInputs(metric=metric, layer=layer, num_layers=4), 5) for layer in (0, 1)]
    for plan in plans:
        assert plan.num_out == 12
        check_plan(plan)
    assert not torch.equal(plans[0].dst, plans[1].dst)
    again = method.plan(MergeInputs(metric=metric, layer=0, num_layers=4), 5)
    assert torch.equal(plans[0].dst, again.dst)
    # merges go from the A side to the B side of the layer's split
    is_a = random_split(17, 1, seed=1)
    assert bool(is_a[plans[0].edges.src].all()) and not bool(is_a[plans[0].edges.dst].any())
