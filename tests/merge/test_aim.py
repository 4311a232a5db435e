"""AIM against hand-worked fixtures derived from LaVi-Lab/AIM @edc24e9: ``llava/model/token_merge.py``
``bipartite_soft_matching_merge`` (plain mean, unmerged A in descending best-match order, then B) and
``modeling_qwen2.py`` ``get_importance`` / ``Qwen2Model.forward`` (PageRank at temperature 0.1, the
retain-rate schedule, key masking with text protected)."""
from __future__ import annotations

import math

import pytest
import torch

from tomviz.merge.aim import (aim_merge, bipartite_plan_score_order, keep_mask, kept_positions, key_bias, merge_schedule,
                              pagerank_scores, retain_rates)

T = torch.tensor


def test_hand_worked_plan_order():
    # A = tokens 0, 2, 4; B = 1, 3, 5. 0 ≈ 1 (cos 1), 2 ≈ 5 (cos 0.99), 4 is far from every B (cos ≤ 0.1)
    metric = T([[[1, 0, 0], [1, 0, 0], [0, 1, 0.1], [0, 0.1, 1], [-1, 0.1, -0.2], [0, 1, 0]]], dtype=torch.float32)
    plan = bipartite_plan_score_order(metric, 2)
    # unmerged A first (only 4 → 0), then B in order: 1 → 1, 3 → 2, 5 → 3; 0 joins 1, 2 joins 5
    assert plan.dst.tolist() == [[1, 1, 3, 2, 0, 3]]
    assert plan.num_out == 4


def test_unmerged_a_tokens_keep_their_best_match_order():
    # B = 1: (0, 1), 3 and 5: (0, -1); A = 0, 2, 4 all match 1, with cosines 0.2, 0.9, 0.5; r = 1 merges 2
    metric = T([[[0.98, 0.2], [0, 1], [0.44, 0.9], [0, -1], [0.87, 0.5], [0, -1]]], dtype=torch.float32)
    plan = bipartite_plan_score_order(metric, 1)
    # unmerged A by descending score: 4 (≈0.5), then 0 (≈0.0); B: 1, 3, 5
    assert plan.dst.tolist() == [[1, 2, 2, 3, 0, 4]]


def test_second_step_is_a_plain_mean_of_means():
    x = T([[[1, 0], [1, 0.1], [0, 1], [1, 0.2]]], dtype=torch.float32)
    merged, source = aim_merge(x, [1, 1])
    # step 1: 0 → 1 (cos 0.995 beats 2 → 3): [t2, (1, 0.05), t3]; step 2: A = t2, t3, B = the mean: t3 joins it
    assert source.tolist() == [[1, 1, 0, 1]]
    assert torch.allclose(merged, T([[[0, 1], [1, 0.125]]]))  # size-weighted would be (1, 0.1)


def test_metric_is_merged_alongside():
    x = torch.arange(8, dtype=torch.float32).view(1, 4, 2)
    metric = T([[[1, 0], [1, 0.01], [0, 1], [0.01, 1]]])  # 0 ≈ 1 and 2 ≈ 3: both merge at r = 2
    merged, source = aim_merge(x, [2], metric)
    assert source.tolist() == [[0, 0, 1, 1]]
    assert merged.tolist() == [[[1, 2], [5, 6]]]


def test_schedules():
    assert merge_schedule(196) == [98, 49]
    assert merge_schedule(576, "llava15") == [288, 36]
    with pytest.raises(ValueError):
        merge_schedule(10, "other")


def test_pagerank_two_tokens():
    # one head, causal: row 0 = [1, 0]; row 1 with equal logits → [1/2, 1/2]. p ← p M five times from (1/2, 1/2):
    # token 1 keeps half of its mass each step: 1/2 · (1/2)^5 = 1/64
    logits = T([[[[0.0, -math.inf], [0.3, 0.3]]]])
    assert torch.allclose(pagerank_scores(logits), T([[63 / 64, 1 / 64]]))
    # a second head where token 1 attends only to token 0: its score is 0 there; RMS over heads
    second = T([[[[0.0, -math.inf], [0.0, -math.inf]]]])
    both = pagerank_scores(torch.cat([logits, second], dim=1))
    assert torch.allclose(both, T([[math.sqrt(((63 / 64) ** 2 + 1) / 2), (1 / 64) / math.sqrt(2)]]))


def test_pagerank_temperature_sharpens():
    logits = T([[[[0.0, -math.inf], [0.2, 0.0]]]])  # row 1: softmax([2, 0]) at temperature 0.1
    p = math.exp(2) / (math.exp(2) + 1)
    assert torch.allclose(pagerank_scores(logits)[0, 1], T(0.5 * (1 - p) ** 5))


def test_retain_rates():
    rates = retain_rates(28)
    assert rates[:14] == [1.0] * 14
    assert rates[14:22] == [0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0]
    assert retain_rates(32)[12:14] == [1.0, 0.875]
    with pytest.raises(ValueError, match="pass start"):
        retain_rates(24)
    assert retain_rates(4, start=1) == [1.0, 0.875, 0.75, 0.625]


def test_keep_mask_counts_from_the_original_visual_count():
    scores = T([[0.5, 0.1, 0.4, 0.3, 0.2, 0.5]])
    protected = T([[True, False, False, False, False, True]])
    active = torch.ones(1, 6, dtype=torch.bool)
    first = keep_mask(scores, active, protected, 0.5)  # int(2 + 4 · 0.5) = 4: text + visual 2, 3
    assert first.tolist() == [[True, False, True, True, False, True]]
    # rate 0.75 → 5 slots, but a pruned token (score -1) never comes back
    assert keep_mask(scores, first, protected, 0.75).tolist() == first.tolist()
    # rate 0.25 → int(2 + 1) = 3: only the best active visual token stays, whatever the new scores
    later = keep_mask(T([[0.0, 0.9, 0.1, 0.2, 0.0, 0.0]]), first, protected, 0.25)
    assert later.tolist() == [[True, False, False, True, False, True]]
    assert keep_mask(scores, active, protected, 1.0) is active


def test_masking_and_dropping():
    active = T([[True, False, True], [False, True, True]])
    bias = key_bias(active)
    assert bias.shape == (2, 1, 1, 3) and bias[0, 0, 0, 1] == torch.finfo(torch.float32).min and bias[0, 0, 0, 0] == 0
    assert kept_positions(active).tolist() == [[0, 2], [1, 2]]
    with pytest.raises(ValueError, match="same number"):
        kept_positions(T([[True, True, False], [True, False, False]]))


def test_merge_steps_reproduce_the_authors_schedules():
    from tomviz.merge.aim import default_start, merge_steps

    assert merge_steps(196, 49) == merge_schedule(196, "onevision") == [98, 49]
    assert merge_steps(576, 252) == merge_schedule(576, "llava15") == [288, 36]
    assert merge_steps(16, 16) == [] and merge_steps(16, 1) == [8, 4, 2, 1]
    assert (default_start(28), default_start(32), default_start(30)) == (14, 13, 15)
    with pytest.raises(ValueError, match="cannot merge"):
        merge_steps(16, 0)
