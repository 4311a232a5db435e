"""ToMe decisions against an independent reference written from the paper (Bolya et al., ICLR 2023).

The reference below runs a ViT forward by hand with explicit softmax attention,
groups kept as Python sets and the reference token order (kept A tokens in
ascending position, then all B tokens), and proportional attention. It shares no
code with tomviz.merge.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers as tf

import tomviz
from tomviz.merge.plan import MergePlan
from tomviz.merge.tome import bipartite_plan
from tests import tiny


def reference_tome_vit(model: tf.ViTModel, pixel_values: torch.Tensor, r: int) -> list[list[int]]:
    """For each layer, the index (after that layer) of the token holding each input token."""
    heads = model.config.num_attention_heads
    with torch.no_grad():
        x = model.embeddings(pixel_values)[0]  # [N, C]
        members = [[i] for i in range(x.shape[0])]  # groups of input tokens, in sequence order
        out = []
        for layer in model.layers:
            n, c = x.shape
            d = c // heads
            sizes = torch.tensor([float(len(g)) for g in members])
            h = layer.layernorm_before(x)
            q = layer.attention.q_proj(h).view(n, heads, d).transpose(0, 1)
            k = layer.attention.k_proj(h).view(n, heads, d).transpose(0, 1)
            v = layer.attention.v_proj(h).view(n, heads, d).transpose(0, 1)
            logits = q @ k.transpose(1, 2) / math.sqrt(d) + sizes.log()[None, None, :]
            attn = torch.softmax(logits, dim=-1) @ v  # [H, N, d]
            x = x + layer.attention.o_proj(attn.transpose(0, 1).reshape(n, c))

            metric = k.mean(0)
            metric = metric / metric.norm(dim=-1, keepdim=True)
            a_idx, b_idx = list(range(0, n, 2)), list(range(1, n, 2))
            scores = metric[a_idx] @ metric[b_idx].T
            scores[0, :] = -math.inf  # CLS is A[0]
            best = scores.max(dim=1)
            rr = min(r, (n - 1) // 2)
            order = sorted(range(len(a_idx)), key=lambda i: -best.values[i].item())
            merged, kept = order[:rr], sorted(order[rr:])
            new_members = [list(members[a_idx[i]]) for i in kept] + [list(members[j]) for j in b_idx]
            sums = [x[a_idx[i]] * sizes[a_idx[i]] for i in kept] + [x[j] * sizes[j] for j in b_idx]
            weights = [sizes[a_idx[i]].clone() for i in kept] + [sizes[j].clone() for j in b_idx]
            for i in merged:
                slot = len(kept) + best.indices[i].item()
                new_members[slot] += members[a_idx[i]]
                sums[slot] = sums[slot] + x[a_idx[i]] * sizes[a_idx[i]]
                weights[slot] = weights[slot] + sizes[a_idx[i]]
            x = torch.stack([s / w for s, w in zip(sums, weights)])
            members = new_members
            x = x + layer.mlp(layer.layernorm_after(x))

            where = np.empty(sum(len(g) for g in members), dtype=np.int64)
            for idx, g in enumerate(members):
                where[g] = idx
            out.append(where.tolist())
    return out


@pytest.fixture(scope="module")
def tiny_vit():
    """A random 4-layer, 32-wide ViT on 8 x 8 patches: the decisions follow the same rules as on a ViT-S/16.
    Weights drawn 5x wider than transformers' default, so that attention (and with it proportional
    attention) moves the tokens enough to change ToMe's choices within 4 layers."""
    return tiny.vit(pooling=False, num_attention_heads=2, patch_size=4, initializer_range=0.1, seed=0)


def test_tome_matches_reference_every_layer(tiny_vit):
    pixel_values = torch.randn(1, 3, 32, 32)
    reference = reference_tome_vit(tiny_vit, pixel_values, r=8)
    res = tomviz.inspect(tiny_vit, pixel_values, r=8)
    assert res.trace.token_counts() == [65 - 8 * i for i in range(5)]
    for layer in range(4):
        assert res.trace.groups(layer).tolist() == reference[layer], f"layer {layer} differs"
    # the comparison sees proportional attention: without it the last layer's choices differ
    plain = tomviz.inspect(tiny_vit, pixel_values, r=8, prop_attn=False)
    assert plain.trace.groups(3).tolist() != reference[3]


def test_bipartite_hand_example():
    # tokens: 0=CLS, then A = {0, 2, 4}, B = {1, 3, 5}; 2 is closest to 5, 4 to 3 (but less similar)
    metric = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.9, 0.1, 0], [0.5, 0, 0.5], [0, 0.1, 1]])[None]
    plan = bipartite_plan(metric, r=1, num_protected=1)
    # 2 merges into 5; kept A = [0, 4] -> 0, 1; B = [1, 3, 5] -> 2, 3, 4
    assert plan.dst[0].tolist() == [0, 2, 4, 3, 1, 4]
    assert plan.num_out == 5
    assert plan.edges.src[0].tolist() == [2] and plan.edges.dst[0].tolist() == [5]
    x = torch.arange(6, dtype=torch.float32).view(1, 6, 1)
    merged, sizes = plan.merge(x, None)
    assert merged[0, :, 0].tolist() == [0, 4, 1, 3, 3.5]
    assert sizes[0, :, 0].tolist() == [1, 1, 1, 1, 2]


def test_protected_tokens_stay_first_and_alone():
    torch.manual_seed(1)
    metric = torch.randn(2, 21, 8)
    metric[:, 1] = metric[:, 2]  # a protected token identical to an unprotected one must still not merge
    plan = bipartite_plan(metric, r=8, num_protected=3)
    for b in range(2):
        assert plan.dst[b, :3].tolist() == [0, 1, 2]
        assert (plan.dst[b, 3:] >= 3).all()
    assert plan.num_out == 13


def test_r_limited_to_half_of_unprotected():
    plan = bipartite_plan(torch.randn(1, 11, 4), r=100, num_protected=1)
    assert plan.num_out == 11 - 5


def test_padding_never_merges_with_real_tokens():
    metric = torch.randn(1, 10, 4)
    valid = torch.tensor([[True] * 6 + [False] * 4])
    plan = bipartite_plan(metric, r=4, num_protected=1, valid=valid)
    real_groups = set(plan.dst[0, :6].tolist())
    pad_groups = set(plan.dst[0, 6:].tolist())
    assert not real_groups & pad_groups


@pytest.mark.parametrize("num_protected", [1, 2, 5])
def test_fast_and_general_paths_agree(num_protected):
    torch.manual_seed(3)
    metric, x = torch.randn(3, 31, 8), torch.randn(3, 31, 6)
    sizes = torch.randint(1, 4, (3, 31, 1)).float()
    is_a = torch.arange(31) % 2 == 0
    fast = bipartite_plan(metric, 9, num_protected)
    general = bipartite_plan(metric, 9, num_protected, is_a=is_a)
    assert torch.equal(fast.dst, general.dst) and torch.equal(fast.keep, general.keep)
    assert torch.equal(fast.edges.src, general.edges.src) and torch.equal(fast.edges.dst, general.edges.dst)
    fx, fs = fast.merge(x, sizes)
    slow = MergePlan(dst=fast.dst, num_out=fast.num_out)  # the generic index_add path
    gx, gs = slow.merge(x, sizes)
    assert torch.allclose(fx, gx, atol=1e-6) and torch.equal(fs, gs)
    assert fast.dst[:, :num_protected].tolist() == [list(range(num_protected))] * 3


def _groups(source: torch.Tensor) -> set[frozenset[int]]:
    """The partition a source map ``[1, N0]`` describes: sets of input tokens sharing an output token."""
    members: dict[int, set[int]] = {}
    for token, out in enumerate(source[0].tolist()):
        members.setdefault(out, set()).add(token)
    return {frozenset(group) for group in members.values()}


def _two_layers(order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ToMe steps (r = 1 each) on eight hand-set features; layer 2's metric is the size-weighted mean."""
    # B = 1, 3, 5, 7. Layer 1: 0 → 1 (cos 1); the unmerged A best matches: 4 (0.633, to 5), 2 (0.6, to 1),
    # 6 (0.555, to 5). By position they come out 2, 4, 6 (so 4 sits on B and 6 on A next layer); by score 4, 2, 6
    # (4 and 6 both on A, 2 on B).
    f = torch.tensor([[1, 0, 0], [1, 0, 0], [0.6, 0.8, 0], [0, 0, 1], [0, 1, 0.1], [0, 1, -1], [0, 1, 0.2], [-1, 0, 0]])[None]
    source = torch.arange(8)[None]
    first = bipartite_plan(f, 1, num_protected=0, order=order)
    merged, sizes = first.merge(f, None)
    second = bipartite_plan(merged, 1, num_protected=0, order=order)
    return first.compose(source), second.compose(first.compose(source))


def test_score_order_changes_the_second_layers_groups():
    by_position, by_score = _two_layers("position"), _two_layers("score")
    assert by_position[0].tolist() == [[3, 3, 0, 4, 1, 5, 2, 6]]
    assert by_score[0].tolist() == [[3, 3, 1, 4, 0, 5, 2, 6]]  # unmerged A: 4, 2, 6 (best match first)
    assert _groups(by_position[0]) == _groups(by_score[0])  # the first layer decides alike
    # layer 2, by position: A = 2, 6, 3, 7 and B = 4, {0, 1}, 5: 6 joins 4 (cos 0.995)
    assert _groups(by_position[1]) == {frozenset({4, 6}), frozenset({0, 1}), *({frozenset({t}) for t in (2, 3, 5, 7)})}
    # by score: A = 4, 6, 3, 7 and B = 2, {0, 1}, 5: 4 and 6 are both on A; 4 joins 2 (cos 0.796)
    assert _groups(by_score[1]) == {frozenset({2, 4}), frozenset({0, 1}), *({frozenset({t}) for t in (3, 5, 6, 7)})}


def test_score_order_keeps_protected_tokens_first():
    torch.manual_seed(2)
    metric = torch.randn(2, 17, 6)
    by_position = bipartite_plan(metric, 5, num_protected=3)
    by_score = bipartite_plan(metric, 5, num_protected=3, order="score")
    assert torch.equal(by_score.dst[:, :3], torch.tensor([[0, 1, 2]] * 2))
    assert _groups(by_score.dst[:1]) == _groups(by_position.dst[:1])  # one step: the same groups
    assert _groups(by_score.dst[1:]) == _groups(by_position.dst[1:])
    for b in range(2):  # the kept unprotected A tokens come out by descending best match
        kept_a = [int(p) for p in by_score.keep[b, 3:] if p % 2 == 0]
        best = (metric[b, kept_a] / metric[b, kept_a].norm(dim=-1, keepdim=True)) @ (
            metric[b, 1::2] / metric[b, 1::2].norm(dim=-1, keepdim=True)).T
        best[:, 0] = -1  # B token 1 is protected
        values = best.max(dim=1).values
        assert torch.all(values[:-1] >= values[1:])


def test_unknown_order_is_refused():
    with pytest.raises(ValueError, match="order"):
        bipartite_plan(torch.randn(1, 6, 3), 1, order="random")
    with pytest.raises(ValueError, match="alternating"):
        bipartite_plan(torch.randn(1, 6, 3), 1, is_a=torch.arange(6) < 3, order="score")
    from tomviz.merge.tome import ToMe
    with pytest.raises(ValueError, match="order"):
        ToMe(order="sideways")
