"""VisionZip against hand-worked fixtures derived from dvlab-research/VisionZip @3151f6d
(``visionzip/clip_encoder.py`` ``CLIPVisionTower_VisionZip.forward``): CLS + top patches by the CLS row
summed over heads, integer target step ``R // c``, contextual token = target + mean of its assigned tokens."""
from __future__ import annotations

import pytest
import torch

from tomviz.merge.visionzip import (CONTEXTUAL, DOMINANT, ORIGINAL_CONTEXTUAL, ORIGINAL_DOMINANT, cls_attention_sum,
                                    target_ranks, visionzip)


def _attention(cls_rows: list[list[float]]) -> torch.Tensor:
    """``[1, H, N, N]`` with the given CLS rows (other rows uniform)."""
    heads, n = len(cls_rows), len(cls_rows[0])
    attention = torch.full((1, heads, n, n), 1.0 / n)
    attention[0, :, 0] = torch.tensor(cls_rows)
    return attention


# 9 tokens (CLS + 8 patches). Head sums of the CLS row: patch 3 and 6 highest (one head alone would pick 2).
CLS_ROWS = [[0.0, 0.05, 0.30, 0.20, 0.05, 0.05, 0.20, 0.05, 0.10],
            [0.0, 0.05, 0.00, 0.25, 0.05, 0.05, 0.20, 0.05, 0.05]]
# keys: tokens 2 and 4 point like token 1, tokens 7 and 8 like token 5
KEYS = torch.tensor([[[0, 0, 1], [1, 0, 0], [0.9, 0.1, 0], [0, 0, 1], [0.8, 0.3, 0],
                      [0, 1, 0], [0, 0, 1], [0.1, 0.9, 0], [0.2, 1.0, 0]]], dtype=torch.float32)
HIDDEN = torch.arange(9, dtype=torch.float32).view(1, 9, 1) * 10  # token i = 10 i


def test_hand_worked_selection_partition_and_values():
    result = visionzip(HIDDEN, _attention(CLS_ROWS), KEYS, dominant=3, contextual=2)
    # dominant: CLS, 3, 6 (summed heads: 3 → 0.45, 6 → 0.40, 2 → 0.30)
    assert result.dominant_index.tolist() == [[0, 3, 6]]
    # the rest, in order: 1 2 4 5 7 8 (R = 6); step 6 // 2 = 3 → targets at ranks 0 and 3: tokens 1 and 5
    assert result.target_index.tolist() == [[1, 5]]
    assert result.plan.dst.tolist() == [[0, 3, 3, 1, 3, 4, 2, 4, 4]]
    # contextual = target + mean of the others: 10 + (20 + 40) / 2 = 40; 50 + (70 + 80) / 2 = 125
    assert result.hidden[0, :, 0].tolist() == [0.0, 30.0, 60.0, 40.0, 125.0]


def test_empty_group_keeps_the_target_alone():
    keys = KEYS.clone()
    keys[0, [2, 4, 7, 8]] = torch.tensor([1.0, 0.0, 0.0])  # every token joins target 1
    result = visionzip(HIDDEN, _attention(CLS_ROWS), keys, dominant=3, contextual=2)
    assert result.hidden[0, 3:, 0].tolist() == [10 + (20 + 40 + 70 + 80) / 4, 50.0]


def test_heads_are_summed_over_the_patches_without_cls():
    scores = cls_attention_sum(_attention(CLS_ROWS))
    assert torch.allclose(scores, torch.tensor([[0.10, 0.30, 0.45, 0.10, 0.10, 0.40, 0.10, 0.15]]))
    assert torch.equal(cls_attention_sum(_attention(CLS_ROWS)[:, :, 0]), scores)  # the CLS rows alone


def test_target_step_is_an_integer():
    assert target_ranks(11, 3).tolist() == [0, 3, 6]  # a float step 11/3 would give 0, 3, 7
    assert target_ranks(523, 10).tolist() == list(range(0, 520, 52))
    assert target_ranks(3, 5).tolist() == [0, 1, 2]


def test_each_crop_has_its_own_choice_and_the_same_budget():
    second = [row[:1] + row[-1:] + row[1:-1] for row in CLS_ROWS]  # patch scores moved one on
    attention = torch.cat([_attention(CLS_ROWS), _attention(second)])
    keys, hidden = KEYS.expand(2, -1, -1), HIDDEN.expand(2, -1, -1)
    result = visionzip(hidden, attention, keys, dominant=3, contextual=2)
    assert result.dominant_index.tolist() == [[0, 3, 6], [0, 4, 7]]
    assert result.hidden.shape == (2, 5, 1)
    for row in result.plan.dst:
        assert torch.bincount(row).gt(0).all() and row.min() >= 0  # a partition, nothing pruned


def test_defaults_and_bad_counts():
    assert (DOMINANT, CONTEXTUAL, ORIGINAL_DOMINANT, ORIGINAL_CONTEXTUAL) == (54, 10, 191, 30)
    n = 1 + 64
    hidden, keys = torch.randn(1, n, 4), torch.randn(1, n, 3)
    attention = torch.rand(1, 2, n, n).softmax(-1)
    assert visionzip(hidden, attention, keys).hidden.shape == (1, 64, 4)
    assert visionzip(hidden, attention, keys, dominant=5, contextual=0).plan.dst.eq(-1).sum() == n - 5
    with pytest.raises(ValueError, match="cannot keep"):
        visionzip(hidden, attention, keys, dominant=60, contextual=10)
