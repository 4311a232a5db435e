import pytest
import torch

from tomviz.merge import MergeInputs, get_method
from tomviz.merge.diffrate import split_removal
from tests.merge.helpers import check_plan

ATTENTION = torch.tensor([[0.5, 0.4, 0.3, 0.2, 0.1, 0.05]])
HIDDEN = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.1, 0, 1], [1, 0, 1]]])


def _inputs(**kw):
    return MergeInputs(metric=HIDDEN, hidden=HIDDEN, cls_attention=ATTENTION, **kw)


def test_split():
    assert split_removal(5, 0.5) == (2, 3) or split_removal(5, 0.5) == (3, 2)
    assert split_removal(4, 0.0) == (0, 4) and split_removal(4, 1.0) == (4, 0)


def test_prunes_least_attended_and_merges_next_into_most_similar():
    plan = get_method("diffrate", prune_fraction=0.5).plan(_inputs(), 2)
    check_plan(plan)
    assert plan.num_out == 4
    dst = plan.dst[0]
    assert dst[5] == -1  # the least attended is pruned
    assert dst[4] == dst[2]  # the next one merges into its most similar kept token (not CLS)
    assert plan.edges.src.tolist() == [[4]] and plan.edges.dst.tolist() == [[2]]


def test_prune_only_and_merge_only():
    assert (get_method("diffrate", prune_fraction=1.0).plan(_inputs(), 2).dst[0, 4:] == -1).all()
    assert (get_method("diffrate", prune_fraction=0.0).plan(_inputs(), 2).dst[0] >= 0).all()


def test_padding_is_pruned_first_and_never_joins_real_tokens():
    valid = torch.tensor([[True, True, True, True, False, False]])
    plan = get_method("diffrate", prune_fraction=0.5).plan(_inputs(valid=valid), 2)
    assert plan.dst[0, 4:].tolist() == [-1, -1]


def test_bad_fraction():
    with pytest.raises(ValueError):
        get_method("diffrate", prune_fraction=1.5)
