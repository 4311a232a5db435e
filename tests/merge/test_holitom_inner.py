"""HoliTom's inner merge (cokeshao/HoliTom @e9b2972, ``holitom/modeling_qwen2.py`` ``Qwen2Model.forward``) on
hand-worked inputs: fold each dropped token into its most similar kept one by a running average, index order."""
from __future__ import annotations

import pytest
import torch

from tomviz.merge.holitom_inner import holitom_fold, holitom_keep_count, most_similar_kept


def test_keep_count_rounds_halves_to_even():
    assert holitom_keep_count(5, 0.5) == 2  # round(2.5)
    assert holitom_keep_count(7, 0.5) == 4  # round(3.5)
    assert holitom_keep_count(196 * 32, 0.5) == 3136
    with pytest.raises(ValueError, match="lie in"):
        holitom_keep_count(4, 1.5)


def test_fold_by_hand():
    """Kept 0 = (1, 0) and 1 = (0, 1). Dropped, in index order: 2 = (1, .1) → 0, 3 = (.1, 1) → 1, 4 = (2, 0) → 0.
    Kept 0: ((1, 0) + (1, .1)) / 2 = (1, .05), then ((1, .05) + (2, 0)) / 2 = (1.5, .025) — a running average,
    not the mean (4/3, 1/30). Kept 1: ((0, 1) + (.1, 1)) / 2 = (.05, 1)."""
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0], [2.0, 0.0]])
    folded, dst = holitom_fold(hidden, torch.tensor([0, 1]))
    assert dst.tolist() == [0, 1, 0, 1, 0]
    torch.testing.assert_close(folded, torch.tensor([[1.5, 0.025], [0.05, 1.0]]))


def test_fold_order_is_the_index_order():
    """Kept 0 = (0, 1) receives 1 = (1, 1) and then 2 = (3, 3): ((0, 1) + (1, 1)) / 2 = (.5, 1), then
    ((.5, 1) + (3, 3)) / 2 = (1.75, 2): the later token weighs half, the earlier a quarter."""
    hidden = torch.tensor([[0.0, 1.0], [1.0, 1.0], [3.0, 3.0]])
    folded, dst = holitom_fold(hidden, torch.tensor([0]))
    assert dst.tolist() == [0, 0, 0]
    torch.testing.assert_close(folded, torch.tensor([[1.75, 2.0]]))


def test_similarity_is_read_before_folding():
    """Token 3 = (1, 1.2) is closer to kept 1 = (0, 1) than to kept 0 = (1, 0) as they enter the layer; folding
    2 = (1, 2) into kept 1 first (making it (.5, 1.5)) does not change where 3 goes."""
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0], [1.0, 1.2]])
    assert most_similar_kept(hidden, torch.tensor([0, 1])).tolist() == [0, 1, 1, 1]
    folded, dst = holitom_fold(hidden, torch.tensor([0, 1]))
    torch.testing.assert_close(folded[1], ((hidden[1] + hidden[2]) / 2 + hidden[3]) / 2)
    torch.testing.assert_close(folded[0], hidden[0])  # received nothing: unchanged
