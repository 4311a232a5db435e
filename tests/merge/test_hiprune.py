"""HiPrune against worked examples and an independent reference of the original's selection
(Danielement321/HiPrune ``encode_images``): anchors = the ``round(k·α/5)`` tokens most attended
(mean over heads and queries) in the anchor layer, buffers = their neighbours, registers = the
rest of the budget ``k`` by the register layer's attention. The reference shares no code with
tomviz.merge."""
from __future__ import annotations

import pytest
import torch

import tomviz
from tomviz.api import run
from tomviz.merge import MergeInputs, get_method
from tomviz.merge.engine import MergeConfig
from tomviz.merge.hiprune import flat_neighbours, grid_neighbours, received_attention, sequence_neighbours
from tests import tiny
from tests.merge.helpers import check_plan

POSITIONS = torch.arange(17).unsqueeze(0)  # CLS + 4x4 grid


def _cells(mask: torch.Tensor) -> list[int]:
    """The patch cells marked in ``[1, 17]`` (CLS left out)."""
    return mask[0, 1:].nonzero().flatten().tolist()


def _anchor(*cells: int) -> torch.Tensor:
    anchor = torch.zeros(1, 17, dtype=torch.bool)
    anchor[0, [1 + c for c in cells]] = True
    return anchor


def test_grid_neighbours_are_the_four_adjacent_cells():
    assert _cells(grid_neighbours(_anchor(5), POSITIONS, (4, 4), 1)) == [1, 4, 6, 9]
    assert _cells(grid_neighbours(_anchor(4), POSITIONS, (4, 4), 1)) == [0, 5, 8]  # left border: no wrap


def test_flat_neighbours_wrap_and_clamp_as_the_original_code():
    assert _cells(flat_neighbours(_anchor(5), POSITIONS, (4, 4), 1)) == [1, 4, 6, 9]
    assert _cells(flat_neighbours(_anchor(4), POSITIONS, (4, 4), 1)) == [0, 3, 5, 8]  # 4 - 1 = 3: previous row
    assert _cells(flat_neighbours(_anchor(15), POSITIONS, (4, 4), 1)) == [11, 14, 15]  # 15 + 1, 15 + 4 clamp to 15


def test_sequence_neighbours():
    anchor = torch.tensor([[False, False, True, False, False]])
    assert sequence_neighbours(anchor).tolist() == [[False, True, False, True, False]]


def test_received_attention():
    attention = torch.tensor([[[0.5, 0.5, 0.0], [0.2, 0.2, 0.6], [0.0, 0.0, 1.0]]])  # (query, key)
    assert torch.allclose(received_attention(attention, None, "mean"), torch.tensor([[0.7, 0.7, 1.6]]) / 3)
    assert received_attention(attention, None, "cls").tolist() == [[0.5, 0.5, 0.0]]
    valid = torch.tensor([[True, True, False]])  # the padding query is left out
    assert torch.allclose(received_attention(attention, valid, "mean"), torch.tensor([[0.35, 0.35, 0.3]]))


def _scores(values: dict[int, float]) -> torch.Tensor:
    scores = torch.zeros(1, 17)
    for cell, value in values.items():
        scores[0, 1 + cell] = value
    return scores


def test_worked_selection():
    # budget 9 (r = 7), alpha 0.5: round(9 * 0.5 / 5) = 1 anchor, its 4 buffers, 4 registers
    anchors = _scores({5: 1.0, 15: 0.9})
    registers = _scores({6: 1.0, 15: 0.9, 0: 0.8, 12: 0.7, 10: 0.6})
    method = get_method("hiprune", alpha=0.5)
    keep = method.select(anchors, registers, 7, 1, None, POSITIONS, (4, 4))
    assert bool(keep[0, 0]) and _cells(keep) == [0, 1, 4, 5, 6, 9, 10, 12, 15]  # 6 is a buffer already
    # an anchor on the left border: the code's neighbours wrap to cell 3 (a buffer, so 4 registers);
    # the grid's do not (3 buffers, 5 registers: the last one is the first of the ties, cell 1)
    anchors = _scores({4: 1.0})
    grid = method.select(anchors, registers, 7, 1, None, POSITIONS, (4, 4))
    flat = get_method("hiprune", alpha=0.5, neighbours="flat").select(anchors, registers, 7, 1, None, POSITIONS, (4, 4))
    assert _cells(grid) == [0, 1, 4, 5, 6, 8, 10, 12, 15]
    assert _cells(flat) == [0, 3, 4, 5, 6, 8, 10, 12, 15]


def test_more_anchors_and_buffers_than_the_budget():
    # alpha 1, budget 3: round(0.6) = 1 anchor with 4 neighbours: the 2 best scored buffers stay
    anchors = _scores({5: 1.0, 6: 0.5, 9: 0.4, 1: 0.3, 4: 0.2})
    keep = get_method("hiprune", alpha=1.0).select(anchors, anchors, 13, 1, None, POSITIONS, (4, 4))
    assert _cells(keep) == [5, 6, 9]


def test_text_uses_sequence_neighbours_and_padding_ranks_last():
    scores = torch.tensor([[1.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.2, 0.0, 0.0, 0.95]])
    valid = torch.tensor([[True] * 9 + [False]])
    keep = get_method("hiprune", alpha=1.0).select(scores, scores, 4, 1, valid)  # budget 5: 1 anchor (3), 2 buffers
    assert keep[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 6]  # registers: 6, then the first tie, 1


def test_single_shot_schedule_and_layers():
    method = get_method("hiprune")
    assert method.schedule_for([10, 20, 30, 0] * 3, 197, 1, 12) == [0] * 10 + [180, 0]
    assert method.observed_layers(24) == (8,) and method.observed_layers(12) == (4,)  # layer 9 of 24 (1-based)
    with pytest.raises(ValueError, match="after the register layer"):
        get_method("hiprune", anchor_layer=11).schedule_for([1] * 12, 197, 1, 12)
    assert get_method("hiprune", single_shot=False).schedule_for([3, 2], 9, 1, 2) == [3, 2]
    with pytest.raises(ValueError):
        get_method("hiprune", neighbours="diagonal")


def test_batch_equals_batch_one():
    torch.manual_seed(0)
    anchors, registers = torch.rand(4, 17), torch.rand(4, 17)
    method = get_method("hiprune", alpha=0.6)
    whole = method.select(anchors, registers, 6, 1, None, POSITIONS.expand(4, -1), (4, 4))
    for b in range(4):
        one = method.select(anchors[b : b + 1], registers[b : b + 1], 6, 1, None, POSITIONS, (4, 4))
        assert torch.equal(one[0], whole[b])


# ------------------------------------------------------------------ a whole ViT against a reference


def reference_hiprune(anchor_attention, register_attention, budget, alpha, cols, wrap):
    """The kept patch indices of one image. attention: ``[N, N]`` (query, key), mean over heads."""
    num_patches = anchor_attention.shape[0] - 1
    shallow_scores = anchor_attention.mean(0)[1:].tolist()
    deep_scores = register_attention.mean(0)[1:].tolist()
    num_anchors = round(budget * alpha / 5)
    anchors = sorted(range(num_patches), key=lambda i: -shallow_scores[i])[:num_anchors]
    shallow = set(anchors)
    for a in anchors:
        for step in (-1, 1, -cols, cols):
            if wrap:
                shallow.add(min(max(a + step, 0), num_patches - 1))
            elif not (step == -1 and a % cols == 0 or step == 1 and a % cols == cols - 1) and 0 <= a + step < num_patches:
                shallow.add(a + step)
    rest = sorted((i for i in range(num_patches) if i not in shallow), key=lambda i: -deep_scores[i])
    return sorted(shallow | set(rest[: budget - len(shallow)]))


@pytest.fixture(scope="module")
def tiny_vit():
    return tiny.vit(pooling=False, patch_size=4, attn_implementation="eager", seed=0)


@pytest.mark.parametrize("neighbours", ["flat", "grid"])
@pytest.mark.parametrize("seed", [0, 1])
def test_vit_single_shot_matches_reference(tiny_vit, neighbours, seed):
    torch.manual_seed(seed)
    pixels = torch.randn(3, 3, 32, 32)  # 64 patches, 8 x 8
    with torch.no_grad():
        attentions = tiny_vit(pixels, output_attentions=True).attentions  # unmerged: [B, H, N, N] per layer
    loaded = tomviz.load(tiny_vit)
    inputs = loaded.prepare(pixels)
    method = get_method("hiprune", alpha=0.5, anchor_layer=1, register_layer=-2, neighbours=neighbours)
    config = MergeConfig(method=method, ratio=0.75, trace=True, extra=inputs.method_extra())
    _, state = run(loaded, inputs, config)
    assert state.trace().meta["schedule"] == [0, 0, 48, 0]  # 64 → 16 patches in one layer
    for b in range(3):
        kept = (state.source[b, 1:] >= 0).nonzero().flatten().tolist()
        anchor_map, register_map = attentions[1][b].mean(0), attentions[2][b].mean(0)
        assert kept == reference_hiprune(anchor_map, register_map, 16, 0.5, 8, wrap=neighbours == "flat")


def test_per_layer_mode_on_text_tokens():
    attention = torch.eye(9).unsqueeze(0) * 0.5 + 0.5 / 9
    plan = get_method("hiprune", single_shot=False, alpha=1.0).plan(
        MergeInputs(metric=torch.randn(1, 9, 4), attention=attention), 4
    )
    check_plan(plan)
    assert plan.num_out == 5
