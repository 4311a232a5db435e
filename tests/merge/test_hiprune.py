import torch

from tomviz.merge import MergeInputs, get_method
from tomviz.merge.hiprune import grid_neighbours, sequence_neighbours
from tests.merge.helpers import check_plan


def test_grid_neighbours_are_the_four_adjacent_cells():
    positions = torch.arange(17).unsqueeze(0)  # CLS + 4x4 grid
    anchor = torch.zeros(1, 17, dtype=torch.bool)
    anchor[0, 1 + 5] = True  # cell (1, 1)
    near = grid_neighbours(anchor, positions, (4, 4), 1)
    assert sorted((near[0].nonzero().flatten() - 1).tolist()) == [1, 4, 6, 9]


def test_sequence_neighbours():
    anchor = torch.tensor([[False, False, True, False, False]])
    assert sequence_neighbours(anchor).tolist() == [[False, True, False, True, False]]


def test_keeps_anchor_buffers_and_registers():
    attention = torch.zeros(1, 17)
    attention[0, 1 + 5] = 1.0  # anchor at cell (1, 1)
    attention[0, 1 + 15] = 0.5  # a far, well attended cell: a register
    method = get_method("hiprune", anchor_fraction=0.125, buffer_fraction=0.5)
    inputs = MergeInputs(metric=torch.randn(1, 17, 4), cls_attention=attention, extra={"patch_grid": [4, 4]})
    plan = method.plan(inputs, 8)  # budget 8: 1 anchor, 4 buffers, 3 registers
    check_plan(plan)
    kept = (plan.dst[0, 1:] >= 0).nonzero().flatten().tolist()
    # anchor 5; buffers 1, 4, 6, 9; registers 15 then the first of the ties (0, 2)
    assert kept == [0, 1, 2, 4, 5, 6, 9, 15]
    # the input positions of the survivors, as the engine tracks them for the next layer's grid
    assert plan.reduce_min(torch.arange(17).unsqueeze(0))[0].tolist() == [0, 1, 2, 3, 5, 6, 7, 10, 16]


def test_text_uses_sequence_neighbours():
    attention = torch.tensor([[1.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.2, 0.0, 0.0]])
    plan = get_method("hiprune", anchor_fraction=0.25, buffer_fraction=0.5).plan(
        MergeInputs(metric=torch.randn(1, 9, 4), cls_attention=attention), 4
    )  # budget 4: 1 anchor (3), 2 buffers (2, 4), 1 register (6)
    assert (plan.dst[0] >= 0).nonzero().flatten().tolist() == [0, 2, 3, 4, 6]
