"""Plans over the visual tokens a VLM's language model receives (tomviz.merge.visual)."""
from __future__ import annotations

import pytest
import torch

from tomviz.merge.visual import VisualTokens, bipartite_to, compose, get_visual_method, group_sizes, sequence_order
from tomviz.merge.plan import MergePlan


def _tokens(v=32, d=8, grid=(4, 4), tiles=2, attention=True):
    torch.manual_seed(0)
    feats = torch.randn(1, v, d)
    return VisualTokens(features=feats, tile_grid=grid, num_tiles=tiles, attention=torch.rand(1, v) if attention else None)


def test_bipartite_to_reaches_any_count():
    tokens = _tokens()
    for keep in (31, 16, 9, 3, 1):
        plan, steps = bipartite_to(tokens.features, keep)
        assert plan.num_out == keep and group_sizes(plan).sum() == 32
        assert steps >= 1


def test_downsample_pools_each_tile():
    plan = get_visual_method("downsample").plan(_tokens(), 8)  # 2 tiles of 4x4 → 2 tiles of 2x2
    assert plan.num_out == 8
    assert plan.dst[0, :4].tolist() == [0, 0, 1, 1] and plan.dst[0, 16:20].tolist() == [4, 4, 5, 5]
    merged, sizes = plan.merge(_tokens().features, None)
    assert torch.allclose(merged[0, 0], _tokens().features[0, [0, 1, 4, 5]].mean(0), atol=1e-6)


def test_selection_methods_keep_exactly():
    for name in ("random_prune", "fastv", "visionzip_paper", "hiprune"):
        plan = get_visual_method(name).plan(_tokens(), 10)
        assert plan.num_out == 10
    fastv = get_visual_method("fastv").plan(_tokens(), 10)
    kept = (fastv.dst[0] >= 0).nonzero()[:, 0]
    assert set(kept.tolist()) == set(_tokens().attention[0].topk(10).indices.tolist())
    zip_plan = get_visual_method("visionzip_paper").plan(_tokens(), 10)
    assert (zip_plan.dst >= 0).all()  # contextual tokens absorb every non-dominant token


def test_fastv_ties_fall_as_topk():
    """Equal scores: the kept set is the one ``torch.topk`` picks (FastV's own call), not the lowest indices."""
    tokens = _tokens(v=16, grid=(4, 4), tiles=1)
    tokens.attention = torch.tensor([[0.5] * 12 + [0.1] * 4])
    kept = (get_visual_method("fastv").plan(tokens, 5).dst[0] >= 0).nonzero()[:, 0]
    assert kept.tolist() == tokens.attention.topk(5).indices.sort().values[0].tolist()


def test_visionzip_runs_before_the_projector_only():
    method = get_visual_method("visionzip")
    assert method.before_projector and method.counts(64) == (54, 10)  # the README's 54 + 10
    assert get_visual_method("visionzip", dominant=191, contextual=30).counts(8) == (191, 30)
    with pytest.raises(ValueError, match="before the projector"):
        method.plan(_tokens(), 10)
    with pytest.raises(ValueError, match="lower the ratio"):
        method.counts(1)
    with pytest.raises(ValueError, match="both dominant and contextual"):
        get_visual_method("visionzip", dominant=10)


def test_compose_and_sequence_order():
    first = MergePlan(dst=torch.tensor([[1, 0, 1, 2]]), num_out=3)
    second = MergePlan(dst=torch.tensor([[0, 0, -1]]), num_out=1)
    assert compose(first, second).dst.tolist() == [[0, 0, 0, -1]]
    ordered = sequence_order(MergePlan(dst=torch.tensor([[2, 0, 2, 1]]), num_out=3))
    assert ordered.dst.tolist() == [[0, 1, 0, 2]]  # outputs numbered by their first member


def test_hiprune_anchors_buffers_registers():
    tokens = _tokens(v=16, grid=(4, 4), tiles=1)
    middle = torch.zeros(1, 16)
    middle[0, 5] = 1.0  # the anchor: cell (1, 1); its neighbours are 1, 4, 6, 9
    deep = torch.zeros(1, 16)
    deep[0, 15] = 1.0  # the register
    tokens.attention, tokens.attention_middle = deep, middle
    plan = get_visual_method("hiprune", alpha=1.0).plan(tokens, 6)  # round(6 * 1.0 / 5) = 1 anchor
    kept = set((plan.dst[0] >= 0).nonzero()[:, 0].tolist())
    assert kept == {5, 1, 4, 6, 9, 15}


def test_hiprune_buffers_stay_in_their_tile():
    tokens = _tokens(v=32, grid=(4, 4), tiles=2)
    middle = torch.zeros(1, 32)
    middle[0, 15] = 1.0  # tile 0's last cell (3, 3): its neighbours are 11 and 14, never tile 1's first row
    tokens.attention, tokens.attention_middle = torch.zeros(1, 32), middle
    plan = get_visual_method("hiprune", alpha=1.0).plan(tokens, 5)  # 1 anchor, 2 buffers, 2 registers
    kept = set((plan.dst[0] >= 0).nonzero()[:, 0].tolist())
    assert {15, 11, 14} <= kept and not {16, 19} & (kept - {0, 1, 2, 3})


def test_dtome_merges_by_threshold():
    feats = torch.randn(1, 16, 8)
    feats[0, 1::2] = feats[0, ::2] + 1e-3  # 8 near-duplicate pairs (tokens 2i and 2i + 1)
    tokens = VisualTokens(features=feats, tile_grid=(4, 4))
    plan = get_visual_method("dtome", threshold=0.999).plan(tokens, 1)
    assert plan.num_out == 8 and (plan.dst[0, ::2] == plan.dst[0, 1::2]).all()  # exactly the duplicates merge
    assert get_visual_method("dtome", threshold=1.5).plan(tokens, 1).num_out == 16  # nothing passes
    assert get_visual_method("dtome", threshold=-1.0).plan(tokens, 5).num_out == 5  # keep is a floor
