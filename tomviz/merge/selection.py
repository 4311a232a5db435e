"""Shared building blocks for the methods that select, prune or fuse tokens.

* :func:`plan_from_assignment` turns "which tokens stay, where the others go"
  into a :class:`~tomviz.merge.plan.MergePlan` whose outputs keep the input
  order (protected tokens first, since they are the first inputs and always kept).
* :func:`protected_first` makes a per-token ranking score put the protected
  tokens (and drop padding) where a method needs them.
"""
from __future__ import annotations

import torch

from tomviz.merge.plan import PRUNED, MergeEdges, MergePlan


def plan_from_assignment(
    keep: torch.Tensor,
    target: torch.Tensor | None = None,
    fused: torch.Tensor | None = None,
    score: torch.Tensor | None = None,
) -> MergePlan:
    """A plan from a per-token decision.

    keep: ``[B, N]`` bool, the tokens that stay (same count in every batch element);
        they become the outputs ``0..K-1`` in input order.
    target: ``[B, N]`` long, for a token that does not stay, the input index of the
        kept token it merges into, or -1 (pruned). Ignored where ``keep``. None = all pruned.
    fused: ``[B, N]`` bool, tokens (not kept) that are fused together into one extra
        output placed after the kept ones (EViT); every batch element must have some.
    score: ``[B, N]`` float, the similarity that chose each merge (for the trace's edges).
    Returns a plan with ``K`` (+1 with ``fused``) outputs. Edges list the merges into
    kept tokens when every batch element has the same number of them.
    """
    batch, num_tokens = keep.shape
    num_kept = int(keep[0].sum())
    if not bool((keep.sum(1) == num_kept).all()):
        raise ValueError("every batch element must keep the same number of tokens")
    rank = keep.long().cumsum(1) - 1  # [B, N] output index of each kept token
    dst = torch.where(keep, rank, torch.full_like(rank, PRUNED))
    merged = torch.zeros_like(keep)
    if target is not None:
        merged = ~keep & (target >= 0)
        if bool((merged & ~keep.gather(1, target.clamp(min=0))).any()):
            raise ValueError("a token merges into a token that does not stay")
        dst = torch.where(merged, rank.gather(1, target.clamp(min=0)), dst)
    num_out = num_kept
    if fused is not None:
        fused = fused & ~keep
        if not bool(fused.any(1).all()):
            raise ValueError("every batch element needs at least one token to fuse")
        dst = torch.where(fused, torch.full_like(dst, num_kept), dst)
        num_out += 1
    return MergePlan(dst=dst, num_out=num_out, edges=merge_edges(merged, target, score))


def merge_edges(merged: torch.Tensor, target: torch.Tensor | None, score: torch.Tensor | None) -> MergeEdges | None:
    """``[B, M]`` edges of the merges into kept tokens, or None when there are none or the counts differ."""
    counts = merged.sum(1)
    if target is None or int(counts[0]) == 0 or not bool((counts == counts[0]).all()):
        return None
    batch = merged.shape[0]
    src = merged.nonzero()[:, 1].view(batch, -1)  # [B, M], ascending input index
    dst = target.gather(1, src)
    weights = score.gather(1, src) if score is not None else torch.ones_like(src, dtype=torch.float32)
    return MergeEdges(src=src, dst=dst, score=weights)


def protected_first(values: torch.Tensor, num_protected: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """A ranking score where the protected tokens come first and padding last.

    values: ``[B, N]`` (higher = more important). Returns a float copy with ``+inf``
    on the first ``num_protected`` tokens and ``-inf`` on padding.
    """
    ranked = values.float().clone()
    if valid is not None:
        ranked = ranked.masked_fill(~valid, -torch.inf)
    ranked[:, :num_protected] = torch.inf
    return ranked


def top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, N]`` bool, True on the ``k`` largest values of each row (ties: lower index first)."""
    order = values.argsort(dim=1, descending=True, stable=True)
    return torch.zeros_like(values, dtype=torch.bool).scatter_(1, order[:, :k], True)
