import torch

from tomviz.merge import MergeInputs, get_method
from tests.merge.helpers import check_plan

ATTENTION = torch.tensor([[0.9, 0.1, 0.5, 0.05, 0.4, 0.02, 0.3]])


def test_keeps_top_k_in_order_and_fuses_the_rest_last():
    plan = get_method("evit").plan(MergeInputs(metric=torch.randn(1, 7, 4), cls_attention=ATTENTION), 2)
    check_plan(plan)
    assert plan.num_out == 5
    # kept: CLS, 2, 4, 6 (in input order); fused: 1, 3, 5 → output 4
    assert plan.dst[0].tolist() == [0, 4, 1, 4, 2, 4, 3]


def test_padding_is_pruned_not_fused():
    valid = torch.tensor([[True, True, True, True, True, False, True]])
    plan = get_method("evit").plan(MergeInputs(metric=torch.randn(1, 7, 4), cls_attention=ATTENTION, valid=valid), 2)
    assert plan.dst[0].tolist() == [0, 4, 1, 4, 2, -1, 3]
