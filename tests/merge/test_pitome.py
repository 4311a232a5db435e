"""PiToMe against hand-worked examples and an independent reference written from the
definition of ``pitome_vision`` (hchautran/PiToMe ``algo/pitome/merge.py``): energy among the
tokens after CLS, rank by energy, A/B alternate by rank; ``pitome``: the 2r highest take part
and every A merges; ``pitome_bsm``: all take part and the r best A merge. The reference
shares no code with tomviz.merge."""
import math

import pytest
import torch

from tomviz.merge import MergeInputs, get_method
from tomviz.merge.pitome import alternate_sides, energy_scores, layer_margin
from tests.merge.helpers import check_plan, unit

# CLS, a cluster of four near-identical tokens, one isolated token, one more cluster member
CLUSTERED = unit([0, 0, 1], [1, 0.00, 0], [1, 0.01, 0], [1, 0.02, 0], [1, 0.03, 0], [0, 1, 0], [1, 0.04, 0])


def _angles(*degrees: float) -> torch.Tensor:
    """``[1, N, 2]`` unit vectors at the given angles."""
    rad = [math.radians(d) for d in degrees]
    return torch.tensor([[[math.cos(a), math.sin(a)] for a in rad]])


# CLS at 45°, then t1..t4 at 0°, 10°, 80°, 85°. With margin 0 (all cosines >= 0, so ELU is the
# identity) the energies among t1..t4 are, by hand:
#   t1 (1 + cos10 + cos80 + cos85) / 4 = 0.5614    t2 (cos10 + 1 + cos70 + cos75) / 4 = 0.6464
#   t3 (cos80 + cos70 + 1 + cos5) / 4 = 0.6280     t4 (cos85 + cos75 + cos5 + 1) / 4 = 0.5856
# ranks: t2, t3, t4, t1 → A = {t2, t4}, B = {t3, t1}.
HAND = _angles(45, 0, 10, 80, 85)


def _groups(plan, b: int = 0) -> set[frozenset[int]]:
    """The groups of input tokens with more than one member."""
    members: dict[int, set[int]] = {}
    for i, out in enumerate(plan.dst[b].tolist()):
        members.setdefault(out, set()).add(i)
    return {frozenset(m) for m in members.values() if len(m) > 1}


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


def test_hand_example_pitome_every_a_merges():
    method = get_method("pitome", margin=0.0)
    # r=1: t2 (A) and t3 (B) take part; t2 merges into t3 although cos70 is low
    assert _groups(method.plan(MergeInputs(metric=HAND), 1)) == {frozenset({2, 3})}
    # r=2: all four take part, t2 → t1 (cos10), t4 → t3 (cos5)
    assert _groups(method.plan(MergeInputs(metric=HAND), 2)) == {frozenset({1, 2}), frozenset({3, 4})}


def test_hand_example_bsm_merges_the_best_proposal():
    method = get_method("pitome", margin=0.0, bsm_layers="first_half")
    # all four take part; proposals t2 → t1 (cos10 = 0.985), t4 → t3 (cos5 = 0.996): the best wins
    plan = method.plan(MergeInputs(metric=HAND, layer=0, num_layers=2), 1)
    check_plan(plan)
    assert _groups(plan) == {frozenset({3, 4})}
    torch.testing.assert_close(plan.edges.score, torch.tensor([[math.cos(math.radians(5))]]))
    # layer 1 of 2 is in the second half: plain pitome again
    assert _groups(method.plan(MergeInputs(metric=HAND, layer=1, num_layers=2), 1)) == {frozenset({2, 3})}


def test_cls_is_nobody_s_neighbour():
    """The energy is computed without CLS: moving CLS next to any token changes no decision."""
    torch.manual_seed(0)
    metric = torch.randn(3, 25, 8)
    method = get_method("pitome")
    base = method.plan(MergeInputs(metric=metric, layer=2, num_layers=12), 8)
    for token in range(1, 25):
        moved = metric.clone()
        moved[:, 0] = metric[:, token]
        assert torch.equal(method.plan(MergeInputs(metric=moved, layer=2, num_layers=12), 8).dst, base.dst)


def _reference(metric: torch.Tensor, r: int, margin: float, variant: str) -> list[set[frozenset[int]]]:
    """Groups (more than one member) per batch element, by loops from the definition."""
    out = []
    for m in metric:
        unit_rows = [row / row.norm() for row in m.double()]
        tokens = list(range(1, len(unit_rows)))  # CLS (token 0) takes no part
        energy = {}
        for i in tokens:
            terms = []
            for j in tokens:
                d = float(unit_rows[i] @ unit_rows[j]) - margin
                terms.append(d if d > 0 else math.exp(d) - 1)
            energy[i] = sum(terms) / len(terms)
        ranked = sorted(tokens, key=lambda i: -energy[i])
        part = ranked[: 2 * r] if variant == "pitome" else ranked
        side_a, side_b = part[0::2], part[1::2]
        best = {}
        for a in side_a:
            sims = [float(unit_rows[a] @ unit_rows[b]) for b in side_b]
            k = max(range(len(sims)), key=lambda k: sims[k])
            best[a] = (sims[k], side_b[k])
        merging = sorted(side_a, key=lambda a: -best[a][0])[:r]
        groups: dict[int, set[int]] = {}
        for a in merging:
            groups.setdefault(best[a][1], {best[a][1]}).add(a)
        out.append({frozenset(g) for g in groups.values()})
    return out


@pytest.mark.parametrize("variant", ["pitome", "bsm"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_in_batches(variant, seed):
    torch.manual_seed(seed)
    batch, num_tokens, layer, num_layers = 1 + seed, 17 + 4 * seed, seed, 12
    centres = torch.randn(batch, 3, 6)
    metric = centres.repeat_interleave(num_tokens // 3 + 1, 1)[:, :num_tokens] + 0.6 * torch.randn(batch, num_tokens, 6)
    metric = metric[:, torch.randperm(num_tokens)]
    r = 3 + seed
    bsm = list(range(num_layers)) if variant == "bsm" else ()
    plan = get_method("pitome", bsm_layers=bsm).plan(MergeInputs(metric=metric, layer=layer, num_layers=num_layers), r)
    check_plan(plan)
    assert plan.num_out == num_tokens - r
    expected = _reference(metric, r, layer_margin(0.9, layer, num_layers), variant)
    assert [_groups(plan, b) for b in range(batch)] == expected


def test_presets_follow_the_authors_patches():
    deit, mae = get_method("pitome", preset="deit"), get_method("pitome", preset="mae")
    assert [deit.layer_variant(l, 12) for l in range(12)] == ["bsm"] * 6 + ["pitome"] * 6
    assert [mae.layer_variant(l, 12) for l in range(12)] == ["pitome"] * 6 + ["bsm"] * 6
    assert deit.margin == mae.margin == 0.75
    clip_hf = get_method("pitome", preset="clip_hf")
    assert [clip_hf.layer_variant(l, 24) for l in (0, 12, 13, 23)] == ["tome", "tome", "pitome", "pitome"]
    clip = get_method("pitome", preset="clip")
    assert clip.margin == 0.95 and clip.metric == "hidden" and clip.layer_variant(0, 12) == "pitome"
    assert get_method("pitome", preset="deit", margin=0.5).margin == 0.5
    with pytest.raises(ValueError):
        get_method("pitome", preset="vit-huge")


def test_hidden_metric_reads_the_hidden_states():
    torch.manual_seed(1)
    keys, hidden = torch.randn(2, 15, 8), torch.randn(2, 15, 8)
    by_hidden = get_method("pitome", metric="hidden").plan(MergeInputs(metric=keys, hidden=hidden), 4)
    by_keys = get_method("pitome").plan(MergeInputs(metric=hidden), 4)
    assert torch.equal(by_hidden.dst, by_keys.dst)


def test_tome_layers_run_plain_tome():
    torch.manual_seed(2)
    metric = torch.randn(2, 15, 8)
    plan = get_method("pitome", tome_layers=1).plan(MergeInputs(metric=metric), 4)
    assert torch.equal(plan.dst, get_method("tome").plan(MergeInputs(metric=metric), 4).dst)


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


@pytest.mark.parametrize("bsm", [(), (0,)])
def test_padding_never_merges_with_real_tokens(bsm):
    torch.manual_seed(0)
    metric = torch.randn(2, 9, 6)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[0, 6:] = False
    valid[1, 8:] = False  # a single padding token
    plan = get_method("pitome", bsm_layers=bsm).plan(MergeInputs(metric=metric, valid=valid, num_layers=2), 4)
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
    assert "tomviz" in get_method("pitome_text").label
