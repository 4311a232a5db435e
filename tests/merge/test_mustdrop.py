"""MustDrop against hand-worked fixtures derived from liuting20/MustDrop @909afa5: ``local_merge.py``
``conditional_pooling`` (3x3 windows, mean off-diagonal cosine >= 0.8, batch minimum r, 8 tokens into the
bottom-right one), ``clip_encoder.py`` (key set: ceil(0.08 (N-1)) by CLS attention), and
``modelling_sparse_llama.py`` (dual-attention filter, key set kept, KV-cache eviction)."""
from __future__ import annotations

import pytest
import torch

from tomviz.merge.mustdrop import (THRESHOLDS, cache_keep_indices, dual_attention_keep, key_set, local_window_merge,
                                   stage_positions, window_tokens)


def test_windows_are_row_major():
    windows = window_tokens(6, 6)
    assert windows.shape == (4, 9)
    assert windows[0].tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14]
    assert windows[1].tolist() == [3, 4, 5, 9, 10, 11, 15, 16, 17]
    with pytest.raises(ValueError, match="divisible"):
        window_tokens(4, 6)


def _grid(similar: dict[int, float]) -> torch.Tensor:
    """``[1, 1 + 36, 48]``: a 6x6 grid whose windows are orthogonal one-hot tokens (score 0), except the
    windows in ``similar``: a shared direction plus ``noise`` times a one-hot (score 1 / (1 + noise²))."""
    patches = torch.eye(48)[:36].clone()
    windows = window_tokens(6, 6)
    for window, noise in similar.items():
        shared = torch.zeros(48)
        shared[40 + window] = 1.0
        patches[windows[window]] = shared + noise * torch.eye(48)[windows[window]]
    return torch.cat([torch.full((1, 48), 5.0), patches])[None]


def test_hand_worked_window_merge():
    hidden = _grid({1: 0.0, 2: 0.4})  # window 1: score 1; window 2: 1 / 1.16 = 0.86; windows 0, 3: 0
    merged, plan = local_window_merge(hidden)
    windows = window_tokens(6, 6)
    expected = torch.empty(37, dtype=torch.long)
    expected[0] = 0  # CLS
    expected[1 + windows[1]] = 1  # best window first
    expected[1 + windows[2]] = 2
    rest = torch.ones(36, dtype=torch.bool)
    rest[windows[1]] = rest[windows[2]] = False
    expected[1:][rest] = torch.arange(3, 3 + 18)  # the others in index order
    assert plan.dst[0].tolist() == expected.tolist()
    assert merged.shape == (1, 1 + 36 - 16, 48)
    assert torch.allclose(merged[0, 2], hidden[0, 1 + windows[2]].mean(0))  # a plain mean of the 9
    assert torch.equal(merged[0, 0], hidden[0, 0])


def test_batch_minimum_count():
    hidden = torch.cat([_grid({1: 0.0, 2: 0.4}), _grid({3: 0.1, 0: 0.6})])  # 0.6: score 0.74
    merged, plan = local_window_merge(hidden)
    assert plan.num_out == 1 + 36 - 8  # the second element has one window above 0.8: r = 1 for both
    assert plan.dst[0, 1 + window_tokens(6, 6)[1]].eq(1).all() and plan.dst[1, 1 + window_tokens(6, 6)[3]].eq(1).all()
    assert local_window_merge(hidden, threshold=1.01)[1].num_out == 37


def test_key_set_takes_ceil_of_eight_percent():
    attention = torch.zeros(1, 2, 26, 26)
    attention[0, 0, 0, 1:] = torch.linspace(0, 1, 25)
    attention[0, 1, 0, 1:] = torch.linspace(1, 0, 25) * 0.5
    attention[0, 1, 0, 5] = 3.0  # patch 4 wins on the head mean
    keys = key_set(attention)
    assert keys.shape == (1, 2)  # ceil(0.08 · 25) = 2
    assert keys.tolist() == [[4, 24]]


def _filter_attention() -> torch.Tensor:
    """1 system token, 4 visual (1..4), 2 text tokens; two heads with the same text rows on the image."""
    attention = torch.zeros(1, 2, 7, 7)
    rows = torch.tensor([[0.5, 0.001, 0.2, 0.0005], [0.3, 0.002, 0.1, 0.0004]])
    attention[0, :, 5:, 1:5] = rows
    return attention


def test_hand_worked_dual_attention_filter():
    # sums per visual token: 0.8, 0.003, 0.3, 0.0009 (total 1.1039); global 0.01 → below 0.011: tokens 1 and 3;
    # individual 0.0015: token 1's largest is 0.002 (stays), token 3's 0.0005 (dropped)
    empty = torch.zeros(0, dtype=torch.long)
    kept, key = dual_attention_keep(_filter_attention(), 1, 4, empty, 0.01, 0.0015)
    assert kept.tolist() == [0, 1, 2] and key.tolist() == []
    kept, key = dual_attention_keep(_filter_attention(), 1, 4, torch.tensor([3]), 0.01, 0.0015)
    assert kept.tolist() == [0, 1, 2, 3] and key.tolist() == [3]  # the key set always stays
    assert dual_attention_keep(_filter_attention(), 1, 4, empty, *THRESHOLDS[None])[0].tolist() == [0, 1, 2, 3]
    assert stage_positions(torch.tensor([0, 2]), 1, 4, 7).tolist() == [0, 1, 3, 5, 6]


def test_cache_eviction_keeps_the_final_survivors():
    stages = [torch.tensor([0, 2, 3, 5]), torch.tensor([1, 3])]  # after layer 1 (of 6 tokens), after layer 3 (of 4)
    per_layer = cache_keep_indices(stages, pruning_layers=(1, 3), num_layers=5)
    assert per_layer[0] is None and per_layer[4] is None
    assert per_layer[1].tolist() == [2, 5]  # the final survivors in the full sequence
    assert per_layer[2].tolist() == [1, 3] and per_layer[3].tolist() == [1, 3]
    with pytest.raises(ValueError):
        cache_keep_indices(stages, pruning_layers=(1, 2, 3))
