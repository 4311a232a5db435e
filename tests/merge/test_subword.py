import pytest
import torch

from tomviz.merge import MergeInputs, get_method
from tomviz.merge.subword import word_merge_targets
from tests.merge.helpers import check_plan

WORDS = [-1, 0, 0, 1, 2, 2, 2, -1]  # [CLS] to ##ken is un ##bel ##ievable [SEP]


def test_targets_left_to_right_up_to_r():
    words = torch.tensor(WORDS)
    assert word_merge_targets(words, 10).tolist() == [0, 1, 1, 3, 4, 4, 4, 7]
    assert word_merge_targets(words, 2).tolist() == [0, 1, 1, 3, 4, 4, 6, 7]


def test_removes_what_the_words_allow_then_nothing():
    method = get_method("subword")
    extra = {"word_ids": WORDS}
    plan = method.plan(MergeInputs(metric=torch.randn(1, 8, 4), extra=extra, layer=0), 4)
    check_plan(plan)
    assert plan.num_out == 5 and plan.dst[0].tolist() == [0, 1, 1, 2, 3, 3, 3, 4]
    positions = plan.reduce_min(torch.arange(8).unsqueeze(0))  # as the engine tracks them
    later = method.plan(MergeInputs(metric=torch.randn(1, 5, 4), extra=extra, layer=1, positions=positions), 4)
    assert later.is_identity


def test_chosen_layer_only():
    method = get_method("subword", layer=2)
    extra = {"word_ids": WORDS}
    assert method.plan(MergeInputs(metric=torch.randn(1, 8, 4), extra=extra, layer=0), 4).is_identity


def test_needs_word_ids():
    with pytest.raises(ValueError, match="text input"):
        get_method("subword").plan(MergeInputs(metric=torch.randn(1, 8, 4)), 1)
