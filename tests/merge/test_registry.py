"""One registry: one name, one algorithm, one class implementing its rule, wherever it runs."""
from __future__ import annotations

import pytest
import torch

from tomviz.merge import METHODS, MergeInputs, get_method, register_method, registry
from tomviz.merge.dtome import DToMe
from tomviz.merge.hiprune import HiPrune
from tomviz.merge.random_ import RandomPrune
from tomviz.merge.selection import top_k_mask
from tomviz.merge.tome import ToMe, bipartite_plan
from tomviz.merge.visual import VISUAL_METHODS, AtBoundary, VisualTokens, get_visual_method


def _tokens(v=32, grid=(4, 4), tiles=2, seed=0):
    generator = torch.Generator().manual_seed(0)
    return VisualTokens(features=torch.randn(1, v, 8, generator=generator), tile_grid=grid, num_tiles=tiles,
                        attention=torch.rand(1, v, generator=generator), attention_middle=torch.rand(1, v, generator=generator),
                        seed=seed)


def test_no_name_is_registered_twice_with_different_classes():
    for name, cls in {**METHODS, **VISUAL_METHODS}.items():
        assert registry.ENTRIES[name].load() is cls
        assert METHODS.get(name, cls) is VISUAL_METHODS.get(name, cls), name
    assert METHODS["random"] is not VISUAL_METHODS["random_prune"]  # merging and pruning: two names
    assert "random" not in VISUAL_METHODS


def test_register_refuses_another_class_under_a_known_name():
    class Impostor(ToMe):
        name = "tome"

    with pytest.raises(ValueError, match="registered already"):
        register_method(Impostor)
    assert register_method(ToMe) is ToMe and METHODS["tome"] is ToMe


def test_where_a_method_runs_is_checked_by_the_registry():
    with pytest.raises(ValueError, match="unknown merge method 'nosuch'"):
        get_method("nosuch")
    with pytest.raises(ValueError, match="pitome works in the encoder, not at the boundary"):
        get_visual_method("pitome")
    with pytest.raises(ValueError, match="visionzip works at the boundary, not in the encoder"):
        get_method("visionzip")


def test_boundary_hiprune_is_the_encoder_rule(monkeypatch):
    tokens = _tokens()
    calls = []
    original = HiPrune.select
    monkeypatch.setattr(HiPrune, "select", lambda self, *a, **k: calls.append(self.alpha) or original(self, *a, **k))
    plan = get_visual_method("hiprune").plan(tokens, 12)
    assert calls == [0.1]  # the encoder class, with its default alpha
    positions = torch.arange(32).expand(1, 32)
    expected = original(HiPrune(), tokens.attention_middle, tokens.attention, 32 - 12, 0, None, positions, (4, 4), 2)
    assert torch.equal(plan.dst[0] >= 0, expected[0])
    assert get_visual_method("hiprune").attention_layers(24) == {"middle": 8, "deep": 22}  # the encoder's layers


def test_boundary_tome_and_dtome_are_the_encoder_rules(monkeypatch):
    tokens = _tokens()
    plan = get_visual_method("tome").plan(tokens, 24)  # one step: 32 → 24
    step = ToMe().plan(MergeInputs(metric=tokens.features, num_protected=0), 8)
    assert torch.equal(plan.dst, step.dst) and torch.equal(plan.dst, bipartite_plan(tokens.features, 8, 0).dst)
    seen = []
    original = DToMe.plan_at_most
    monkeypatch.setattr(DToMe, "plan_at_most", lambda self, inputs, r: seen.append(self.threshold) or original(self, inputs, r))
    assert isinstance(get_visual_method("dtome"), AtBoundary)
    get_visual_method("dtome").plan(tokens, 4)
    assert seen and set(seen) == {0.9}  # the registry's default for the boundary


def test_random_prune_keeps_a_seeded_subset_and_the_old_name_warns():
    tokens = _tokens(seed=3)
    plan = get_visual_method("random_prune").plan(tokens, 10)
    expected = top_k_mask(torch.rand(1, 32, generator=torch.Generator().manual_seed(3)), 10)  # the former rule
    assert torch.equal(plan.dst[0] >= 0, expected[0]) and plan.num_out == 10
    with pytest.warns(DeprecationWarning, match="renamed 'random_prune'.*removed in tomviz 0.2.0"):
        old = get_visual_method("random")
    assert isinstance(old.method, RandomPrune) and torch.equal(old.plan(tokens, 10).dst, plan.dst)
    with pytest.warns(DeprecationWarning, match="removed in tomviz 0.2.0"):
        from tomviz.merge.visual import RandomVisual
    assert torch.equal(RandomVisual().plan(tokens, 10).dst, plan.dst)


def test_random_prune_in_an_encoder_keeps_the_protected_tokens():
    metric = torch.randn(2, 9, 4)
    plan = RandomPrune(seed=1).plan(MergeInputs(metric=metric, num_protected=1), 5)
    assert plan.num_out == 4 and (plan.dst[:, 0] == 0).all() and ((plan.dst >= 0).sum(1) == 4).all()


def test_command_line_lists_are_the_registry():
    from tomviz.cli import METHOD_NAMES
    from tomviz.cli_vlm import VISUAL_METHOD_NAMES

    assert set(METHOD_NAMES) == set(METHODS) and set(VISUAL_METHOD_NAMES) == set(VISUAL_METHODS)
