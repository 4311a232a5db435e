"""DiffRate against worked examples and an independent reference of the original's definition
(OpenGVLab/DiffRate ``DiffRateBlock.forward``, eval branch, and ``get_merge_func``): sort by CLS
attention, keep ``k_prune``, merge the band ``k_merge..k_prune`` into the most similar kept
token (plain mean of x; size ``size_dst + Σ size_src · cos``). The reference below shares no
code with tomviz.merge."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers as tf

import tomviz
from tomviz.api import run
from tomviz.merge import MergeInputs, get_method
from tomviz.merge.diffrate import kept_counts, published_schedule, published_schedules, split_removal
from tomviz.merge.engine import MergeConfig
from tests import tiny
from tests.merge.helpers import check_plan

# CLS, t1 .. t5. Sorted by attention: CLS, t2, t4, t5, t1, t3.
ATTENTION = torch.tensor([[0.5, 0.1, 0.4, 0.05, 0.3, 0.2]])
HIDDEN = torch.tensor([[[3.0, 4.0, 0.1], [1, 0, 1], [1, 0, 0], [0, 0, 5], [0, 1, 0], [3, 4, 0]]])
SIZES = torch.tensor([[[1.0], [2.0], [1.0], [1.0], [3.0], [2.0]]])


def _inputs(**kw):
    return MergeInputs(metric=HIDDEN, hidden=HIDDEN, cls_attention=ATTENTION, sizes=SIZES, **kw)


def test_worked_example_prune_one_merge_two():
    # keep 5 after pruning, 3 after merging: t3 (least attended) is pruned; t5 and t1 merge into t2 or t4.
    # cos(t5, t4) = 0.8 > cos(t5, t2) = 0.6 (and cos(t5, CLS) ≈ 1, but nothing merges into CLS);
    # cos(t1, t2) = 1/√2 > cos(t1, t4) = 0.
    plan = get_method("diffrate", schedule=([5], [3])).plan(_inputs(), 3)
    check_plan(plan)
    assert plan.dst[0].tolist() == [0, 1, 1, -1, 2, 2]  # outputs: CLS, t2, t4 (attention order)
    x, sizes = plan.merge(HIDDEN, SIZES)
    cos_t1_t2 = 1 / math.sqrt(2)
    expected = torch.tensor([[3.0, 4.0, 0.1], [1.0, 0.0, 0.5], [1.5, 2.5, 0.0]])  # plain means
    assert torch.allclose(x[0], expected)
    assert torch.allclose(sizes[0, :, 0], torch.tensor([1.0, 1 + 2 * cos_t1_t2, 3 + 2 * 0.8]))
    assert plan.edges.src.tolist() == [[1, 5]] and plan.edges.dst.tolist() == [[2, 4]]
    assert torch.allclose(plan.edges.score, torch.tensor([[cos_t1_t2, 0.8]]))


def test_size_weighted_option_is_tomes_rule():
    plan = get_method("diffrate", schedule=([5], [3]), size_weighted=True).plan(_inputs(), 3)
    x, sizes = plan.merge(HIDDEN, SIZES)
    assert torch.allclose(x[0, 1:], torch.tensor([[1.0, 0.0, 2 / 3], [6 / 5, 11 / 5, 0.0]]))
    assert sizes[0, :, 0].tolist() == [1.0, 3.0, 5.0]


def test_sorts_even_when_nothing_goes_and_reorder_false_keeps_input_order():
    plan = get_method("diffrate").plan(_inputs(), 0)
    assert plan.dst[0].tolist() == [0, 4, 1, 5, 2, 3]  # output position = attention rank
    assert not plan.is_identity
    assert get_method("diffrate", reorder=False).plan(_inputs(), 0).is_identity
    plan = get_method("diffrate", schedule=([6], [6])).plan(_inputs(), 0)  # reorders, removes nothing
    assert plan.dst[0].tolist() == [0, 4, 1, 5, 2, 3]
    # t3 merges into t1, its only similar kept token
    assert get_method("diffrate", schedule=([6], [5])).plan(_inputs(), 1).dst[0].tolist() == [0, 4, 1, 4, 2, 3]
    kept_in_order = get_method("diffrate", schedule=([6], [5]), reorder=False).plan(_inputs(), 1)
    assert kept_in_order.dst[0].tolist() == [0, 1, 2, 1, 3, 4]


def test_split_and_kept_counts():
    assert split_removal(5, 0.5) in ((2, 3), (3, 2))
    assert split_removal(4, 0.0) == (0, 4) and split_removal(4, 1.0) == (4, 0)
    assert kept_counts(148, 164, 156) == (148, 148)  # counts above what is left keep everything
    assert kept_counts(197, 190, 176) == (190, 176)


def test_published_schedules_and_schedule_for():
    table = published_schedules()
    assert set(table) >= {"ViT-T-DeiT", "ViT-S-DeiT", "ViT-B-DeiT", "ViT-B-MAE", "ViT-L-MAE", "ViT-H-MAE"}
    prune, merge = published_schedule("ViT-S-DeiT/2.9")
    assert len(prune) == len(merge) == 12 and prune[0] == 197 and merge[-1] == 3
    method = get_method("diffrate", schedule=([6, 4, 6], [5, 4, 2]))
    assert method.schedule_for([0, 0, 0], 6, 1, 3) == [1, 1, 2]  # 6 → 5 → 4 → 2
    with pytest.raises(ValueError, match="layers"):
        method.schedule_for([0] * 4, 6, 1, 4)
    with pytest.raises(ValueError, match="no published"):
        get_method("diffrate", schedule="ViT-S-DeiT/9.9")
    with pytest.raises(ValueError):
        get_method("diffrate", prune_fraction=1.5)


def test_padding_is_pruned_first_and_never_joins_real_tokens():
    valid = torch.tensor([[True, True, True, True, False, False]])
    inputs = MergeInputs(metric=HIDDEN, hidden=HIDDEN, cls_attention=torch.tensor([[0.5, 0.4, 0.3, 0.2, 0.9, 0.8]]), valid=valid)
    plan = get_method("diffrate", prune_fraction=0.5).plan(inputs, 2)
    assert plan.dst[0, 4:].tolist() == [-1, -1]


def test_batch_equals_batch_one():
    torch.manual_seed(3)
    hidden = torch.randn(3, 20, 8)
    attention = torch.rand(3, 20).softmax(-1)
    sizes = torch.rand(3, 20, 1) + 1
    method = get_method("diffrate", prune_fraction=0.4)
    whole = method.plan(MergeInputs(metric=hidden, hidden=hidden, cls_attention=attention), 7)
    x, s = whole.merge(hidden, sizes)
    for b in range(3):
        one = method.plan(MergeInputs(metric=hidden[b : b + 1], hidden=hidden[b : b + 1], cls_attention=attention[b : b + 1]), 7)
        assert torch.equal(one.dst[0], whole.dst[b])
        x1, s1 = one.merge(hidden[b : b + 1], sizes[b : b + 1])
        assert torch.allclose(x1[0], x[b], atol=1e-6) and torch.allclose(s1[0], s[b], atol=1e-6)


# ------------------------------------------------------------------ a whole ViT against a reference


def reference_diffrate_vit(model: tf.ViTModel, pixel_values: torch.Tensor, prune_kept, merge_kept):
    """Per layer: where each input token is after it (-1 = pruned); then the final tokens and sizes."""
    heads = model.config.num_attention_heads
    with torch.no_grad():
        x = model.embeddings(pixel_values)[0]  # [N, C]
        sizes = [1.0] * x.shape[0]
        members = [[i] for i in range(x.shape[0])]
        where_per_layer = []
        for layer, keep_p, keep_m in zip(model.layers, prune_kept, merge_kept):
            n, c = x.shape
            d = c // heads
            h = layer.layernorm_before(x)
            q = layer.attention.q_proj(h).view(n, heads, d).transpose(0, 1)
            k = layer.attention.k_proj(h).view(n, heads, d).transpose(0, 1)
            v = layer.attention.v_proj(h).view(n, heads, d).transpose(0, 1)
            logits = q @ k.transpose(1, 2) / math.sqrt(d) + torch.tensor(sizes).log()[None, None, :]
            probs = torch.softmax(logits, dim=-1)
            x = x + layer.attention.o_proj((probs @ v).transpose(0, 1).reshape(n, c))
            cls_attention = probs[:, 0, :].mean(0)
            order = [0] + sorted(range(1, n), key=lambda i: -cls_attention[i].item())
            keep_p, keep_m = min(n, keep_p), min(n, keep_p, keep_m)
            kept, band = order[:keep_m], order[keep_m:keep_p]
            unit = x / x.norm(dim=-1, keepdim=True)
            rows = {t: [x[t]] for t in kept}
            new_sizes = {t: sizes[t] for t in kept}
            new_members = {t: list(members[t]) for t in kept}
            for b in band:
                cos = {t: float(unit[b] @ unit[t]) for t in kept[1:]}
                t = max(kept[1:], key=lambda j: cos[j])
                rows[t].append(x[b])
                new_sizes[t] += sizes[b] * cos[t]
                new_members[t] += members[b]
            x = torch.stack([torch.stack(rows[t]).mean(0) for t in kept])
            sizes = [new_sizes[t] for t in kept]
            members = [new_members[t] for t in kept]
            x = x + layer.mlp(layer.layernorm_after(x))
            where = np.full(pixel_values.shape[-1] ** 2 // model.config.patch_size**2 + 1, -1)
            for idx, group in enumerate(members):
                where[group] = idx
            where_per_layer.append(where)
        return where_per_layer, model.layernorm(x), torch.tensor(sizes)


@pytest.fixture(scope="module")
def tiny_vit():
    return tiny.vit(pooling=False, num_hidden_layers=3, patch_size=4, seed=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vit_matches_reference_every_layer(tiny_vit, seed):
    # 65 tokens; the last layer removes more than half of what is left (19 → 4)
    prune_kept, merge_kept = [60, 40, 9], [50, 19, 4]
    torch.manual_seed(seed)
    pixels = torch.randn(2, 3, 32, 32)
    config = MergeConfig(method=get_method("diffrate", schedule=(prune_kept, merge_kept)), trace=True)
    outputs, state = run(tomviz.load(tiny_vit), tomviz.load(tiny_vit).prepare(pixels), config)
    trace = state.trace()
    assert trace.meta["schedule"] == [15, 31, 15]
    for b in range(2):
        where, final, sizes = reference_diffrate_vit(tiny_vit, pixels[b : b + 1], prune_kept, merge_kept)
        if b == 0:
            for layer in range(3):
                assert trace.groups(layer).tolist() == where[layer].tolist()
        assert state.source[b].tolist() == where[-1].tolist()
        assert torch.allclose(outputs.last_hidden_state[b], final, atol=1e-5)
        assert torch.allclose(state.sizes[b, :, 0], sizes, atol=1e-5)
