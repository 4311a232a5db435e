"""ToMe: bipartite soft matching (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023).

Written from the paper's definition (see shared REFERENCES.md §2):
split the tokens by position into A (even) and B (odd); every A token proposes
its most similar B token (cosine of the keys averaged over heads); the ``r``
proposals with the highest similarity merge. The output order is: protected
tokens, kept A tokens in ascending position, then the B tokens in order; the
next layer's A/B split depends on this order.
"""
from __future__ import annotations

import torch

from tomviz.merge.base import MergeInputs, MergeMethod, max_removable
from tomviz.merge.plan import MergeEdges, MergePlan


def bipartite_plan(
    metric: torch.Tensor,
    r: int,
    num_protected: int = 1,
    valid: torch.Tensor | None = None,
    is_a: torch.Tensor | None = None,
) -> MergePlan:
    """Bipartite soft matching.

    metric: ``[B, N, C]`` similarity features (normalised here).
    r: tokens to remove (clipped to half the unprotected tokens).
    num_protected: the first tokens never merge and receive no merges.
    valid: ``[B, N]`` bool; padding (False) only merges with padding.
    is_a: ``[N]`` bool, the A side; default: even positions. Any split works,
        as long as protected tokens may sit on either side.
    Returns a :class:`MergePlan` with ``N - r`` outputs.
    """
    batch, num_tokens, _ = metric.shape
    r = min(r, max_removable(num_tokens, num_protected))
    device = metric.device
    if r <= 0:
        return MergePlan.identity(batch, num_tokens, device)

    positions = torch.arange(num_tokens, device=device)
    if is_a is None:
        is_a = positions % 2 == 0
    a_pos = positions[is_a]  # [Na]
    b_pos = positions[~is_a]  # [Nb]

    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        scores = metric[:, a_pos] @ metric[:, b_pos].transpose(1, 2)  # [B, Na, Nb]
        if num_protected > 0:
            scores[:, a_pos < num_protected, :] = -torch.inf
            scores[:, :, b_pos < num_protected] = -torch.inf
        if valid is not None:
            # padding never merges with real tokens; padding with padding is preferred,
            # so real tokens are not forced into padding when r is large.
            va, vb = valid[:, a_pos], valid[:, b_pos]  # [B, Na], [B, Nb]
            same = va.unsqueeze(2) == vb.unsqueeze(1)
            scores = torch.where(same, scores, -torch.inf)
            pad_pair = (~va).unsqueeze(2) & (~vb).unsqueeze(1)
            scores = torch.where(pad_pair, torch.finfo(scores.dtype).max, scores)

        best_score, best_b = scores.max(dim=-1)  # [B, Na]
        order = best_score.argsort(dim=-1, descending=True)  # [B, Na]
        src_a = order[:, :r]  # [B, r] A indices that merge away
        merged = torch.zeros_like(best_score, dtype=torch.bool).scatter_(1, src_a, True)  # [B, Na]

        num_a, num_b = a_pos.numel(), b_pos.numel()
        a_protected = (a_pos < num_protected).expand(batch, num_a)
        b_protected = (b_pos < num_protected).expand(batch, num_b)
        # Output order: protected (they are the first tokens), kept unprotected A, unprotected B.
        kept_a = ~merged & ~a_protected
        rank_a = kept_a.long().cumsum(1) - 1  # [B, Na]
        n_kept_a = num_a - r - int(a_protected[0].sum())
        rank_b = (~b_protected).long().cumsum(1) - 1  # [B, Nb]
        out_b = num_protected + n_kept_a + rank_b  # [B, Nb]
        out_b = torch.where(b_protected, b_pos.expand(batch, num_b), out_b)
        out_a = num_protected + rank_a
        out_a = torch.where(a_protected, a_pos.expand(batch, num_a), out_a)
        out_a = torch.where(merged, out_b.gather(1, best_b), out_a)

        dst = torch.empty(batch, num_tokens, dtype=torch.long, device=device)
        dst[:, a_pos] = out_a
        dst[:, b_pos] = out_b
        edges = MergeEdges(
            src=a_pos[src_a],
            dst=b_pos[best_b.gather(1, src_a)],
            score=best_score.gather(1, src_a),
        )
    return MergePlan(dst=dst, num_out=num_tokens - r, edges=edges)


class ToMe(MergeMethod):
    """Bipartite soft matching on the attention keys."""

    name = "tome"
    label = "ToMe (bipartite soft matching)"

    def plan(self, inputs: MergeInputs, r: int) -> MergePlan:
        return bipartite_plan(inputs.metric, r, inputs.num_protected, inputs.valid)
