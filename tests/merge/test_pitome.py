import torch

from tomviz.merge import MergeInputs, get_method
from tomviz.merge.pitome import alternate_sides, energy_scores, layer_margin
from tests.merge.helpers import check_plan, unit

# CLS, a cluster of four near-identical tokens, one isolated token, one more cluster member
CLUSTERED = unit([0, 0, 1], [1, 0.00, 0], [1, 0.01, 0], [1, 0.02, 0], [1, 0.03, 0], [0, 1, 0], [1, 0.04, 0])


def test_energy_by_hand():
    # two identical tokens and one orthogonal, margin 0: ELU(1)=1, ELU(0)=0
    metric = unit([1, 0], [1, 0], [0, 1])
    energy = energy_scores(metric, margin=0.0)
    torch.testing.assert_close(energy, torch.tensor([[2 / 3, 2 / 3, 1 / 3]]))
    # margin 0.5: ELU(0.5)=0.5, ELU(-0.5)=exp(-0.5)-1
    e = torch.tensor(-0.5).exp() - 1
    torch.testing.assert_close(energy_scores(metric, 0.5)[0, 2], (2 * e + 0.5) / 3)


def test_margin_shrinks_with_depth():
    assert layer_margin(0.9, 0, 12) == 0.9
    assert abs(layer_margin(0.9, 6, 12) - 0.45) < 1e-9


def test_isolated_token_survives_and_sides_alternate_by_energy():
    plan = get_method("pitome").plan(MergeInputs(metric=CLUSTERED, layer=0, num_layers=12), 2)
    check_plan(plan)
    assert plan.num_out == 5
    dst = plan.dst[0]
    assert (dst == dst[5]).sum() == 1, "the isolated token must stay alone"
    # the merges stay inside the cluster
    assert set(plan.edges.src[0].tolist()) | set(plan.edges.dst[0].tolist()) <= {1, 2, 3, 4, 6}
    assert alternate_sides(None, 4).tolist() == [True, False, True, False]


def test_padding_alternates_within_its_kind():
    valid = torch.tensor([[True, False, True, False]])
    assert alternate_sides(valid, 4).tolist() == [[True, True, False, False]]


def test_padding_never_merges_with_real_tokens():
    metric = torch.randn(2, 9, 6)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[0, 6:] = False
    valid[1, 8:] = False  # a single padding token
    plan = get_method("pitome").plan(MergeInputs(metric=metric, valid=valid, num_layers=2), 4)
    check_plan(plan)
    for b in range(2):
        for out in plan.dst[b].unique():
            assert valid[b, plan.dst[b] == out].unique().numel() == 1


def test_text_variant_keeps_sep_until_last():
    metric = CLUSTERED.clone()
    metric[0, -1] = metric[0, 1]  # the last token ([SEP]) joins the cluster
    plan = get_method("pitome_text").plan(MergeInputs(metric=metric, layer=0, num_layers=12), 2)
    check_plan(plan)
    dst = plan.dst[0]
    assert (dst == dst[6]).sum() == 1
    full = get_method("pitome_text").plan(MergeInputs(metric=metric, layer=0, num_layers=12), 3)
    assert full.num_out == 4  # with r = (N - P) / 2 it has to be merged too
