"""FastV's selection against hand-worked fixtures derived from pkunlp-icler/FastV @d165972
(``LlamaModel.fastv_forward``): keep ``round(V * (1 - r))`` image tokens by the last token's attention
(mean over heads, ``torch.topk``); everything outside the image block stays; positions kept."""
from __future__ import annotations

import pytest
import torch

from tomviz.merge.fastv import fastv_keep_count, fastv_keep_mask, fastv_keep_positions, fastv_top, last_token_image_attention


def test_keep_count_rounds_halves_to_even():
    assert fastv_keep_count(729, 0.5) == 364  # 364.5 → 364 (V - round(r V) would keep 365)
    assert fastv_keep_count(7, 0.5) == 4  # 3.5 → 4
    assert fastv_keep_count(5, 0.5) == 2  # 2.5 → 2
    assert fastv_keep_count(576, 0.75) == 144
    with pytest.raises(ValueError):
        fastv_keep_count(10, 1.5)


def test_hand_worked_positions():
    # 7 tokens: 1 before, 4 image tokens (1..4), 2 after; two heads whose mean decides
    attention = torch.zeros(1, 2, 7, 7)
    attention[0, 0, -1] = torch.tensor([0.1, 0.30, 0.00, 0.10, 0.20, 0.1, 0.2])
    attention[0, 1, -1] = torch.tensor([0.1, 0.00, 0.40, 0.05, 0.25, 0.1, 0.1])
    # mean over heads on the image block: [0.15, 0.20, 0.075, 0.225] → keep image 1 and 3 (positions 2, 4)
    assert torch.allclose(last_token_image_attention(attention, 1, 4), torch.tensor([[0.15, 0.20, 0.075, 0.225]]))
    assert fastv_keep_positions(attention, 1, 4, 0.5).tolist() == [[0, 2, 4, 5, 6]]
    assert fastv_keep_positions(attention, 1, 4, 0.0).tolist() == [list(range(7))]


def test_each_batch_element_chooses():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.8, 0.1, 0.2, 0.7]])
    assert fastv_keep_mask(scores, 0.5).tolist() == [[False, True, True, False], [True, False, False, True]]


def test_top_is_ascending_and_follows_topk():
    scores = torch.tensor([[0.3, 0.9, 0.1, 0.5, 0.7]])
    assert fastv_top(scores, 3).tolist() == [[1, 3, 4]]
    ties = torch.tensor([[0.5, 0.2, 0.5, 0.5, 0.1]])
    assert fastv_top(ties, 2).tolist() == [ties.topk(2).indices.sort().values[0].tolist()]
