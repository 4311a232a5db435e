"""ToMe: bipartite soft matching (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023).

Written from the paper's definition (bipartite soft matching, size-weighted merging, proportional attention):
split the tokens by position into A (even) and B (odd); every A token proposes
its most similar B token (cosine of the keys averaged over heads); the ``r``
proposals with the highest similarity merge. The output order is: protected
tokens, kept A tokens in ascending position, then the B tokens in order; the
next layer's A/B split depends on this order.

``order="score"`` keeps the unmerged A tokens in descending best-match order instead: what
facebookresearch/ToMe ``tome/merge.py`` ``bipartite_soft_matching`` does when ``class_token=False``
(it sorts them by position only to keep a class token first), and so what its copies without a class
token do (TinyChart's SigLIP, X-PLUG/mPLUG-DocOwl @f91a768 ``TinyChart/tinychart/model/multimodal_encoder/
merge.py``; AIM, LaVi-Lab/AIM @edc24e9 ``llava/model/token_merge.py``). Protected tokens stay first either way.

Reproduces facebookresearch/ToMe ``tome/merge.py`` (``bipartite_soft_matching``, ``merge_wavg``), whose
decisions ``tests/merge/test_tome.py`` checks at every layer against an independent reference written from
that definition (no commit of the repository is pinned). Deliberate
differences: the keys are summed over heads, not averaged (cosine is scale-free: the same decisions); any
number of protected leading tokens (CLS, distillation, registers), not only CLS and DeiT's distillation
token; text padding never merges; proportional attention is an additive SDPA mask, so the fused kernel runs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from tomviz.merge.base import MergeInputs, MergeMethod, max_removable
from tomviz.merge.plan import MergeEdges, MergePlan


def bipartite_plan(
    metric: torch.Tensor,
    r: int,
    num_protected: int = 1,
    valid: torch.Tensor | None = None,
    is_a: torch.Tensor | None = None,
    order: str = "position",
) -> MergePlan:
    """Bipartite soft matching.

    metric: ``[B, N, C]`` similarity features (normalised here).
    r: tokens to remove (clipped to half the unprotected tokens).
    num_protected: the first tokens never merge and receive no merges.
    valid: ``[B, N]`` bool; padding (False) only merges with padding.
    is_a: ``[N]`` bool, the A side; default: even positions. Any split works,
        as long as protected tokens may sit on either side.
    order: where the unmerged A tokens go, after the protected ones: ``"position"`` (ascending) or
        ``"score"`` (descending best match, the reference code's order without a class token;
        the alternating split only).
    Returns a :class:`MergePlan` with ``N - r`` outputs.
    """
    check_order(order, is_a)
    batch, num_tokens, _ = metric.shape
    r = min(r, max_removable(num_tokens, num_protected))
    if r <= 0:
        return MergePlan.identity(batch, num_tokens, metric.device)
    with torch.no_grad():
        if is_a is None:
            return plan_from_proposals(alternating_proposals(metric, num_protected, valid), r, order)
        return _general_plan(metric, r, num_protected, valid, is_a)


def _scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every A token to every B token: ``[B, Na, C] x [B, Nb, C] → [B, Na, Nb]``."""
    a = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    b = b / torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    return a @ b.transpose(1, 2)


@functools.lru_cache(maxsize=1024)
def _arange(start: int, end: int, step: int, device: torch.device) -> torch.Tensor:
    """A cached ``arange`` (read-only: never modify the result in place)."""
    return torch.arange(start, end, step, device=device)


def _mask_padding(scores: torch.Tensor, valid_a: torch.Tensor, valid_b: torch.Tensor) -> torch.Tensor:
    """Padding never merges with real tokens; padding with padding is preferred, so real
    tokens are not forced into padding when r is large. valid_*: ``[B, Na]``, ``[B, Nb]``."""
    same = valid_a.unsqueeze(2) == valid_b.unsqueeze(1)
    scores = torch.where(same, scores, -torch.inf)
    pad_pair = (~valid_a).unsqueeze(2) & (~valid_b).unsqueeze(1)
    return torch.where(pad_pair, torch.finfo(scores.dtype).max, scores)


@dataclass(frozen=True)
class Proposals:
    """Every A token's best B partner under the reference split (A = even positions, B = odd)."""

    best_score: torch.Tensor  # [B, Na] cosine similarity of each A token's best B token
    best_b: torch.Tensor  # [B, Na] index of that B token (into B)
    order: torch.Tensor  # [B, Na] A indices by best_score, highest first
    num_tokens: int  # N
    num_protected: int  # P

    def top_scores(self, r: int) -> torch.Tensor:
        """``[B, r]`` the ``r`` highest proposal similarities, highest first."""
        return self.best_score.gather(1, self.order[:, :r])


def alternating_proposals(metric: torch.Tensor, num_protected: int, valid: torch.Tensor | None) -> Proposals:
    """Score the proposals of the reference split, written with slices for speed. metric: ``[B, N, C]``."""
    protected_a, protected_b = (num_protected + 1) // 2, num_protected // 2  # A[:pa], B[:pb] are protected
    metric = metric / torch.linalg.vector_norm(metric, dim=-1, keepdim=True)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # [B, Na, Nb] cosine similarities
    scores[:, :protected_a] = -torch.inf
    if protected_b:
        scores[:, :, :protected_b] = -torch.inf
    if valid is not None:
        scores = _mask_padding(scores, valid[:, ::2], valid[:, 1::2])
    best_score, best_b = scores.max(dim=-1)  # [B, Na]
    order = best_score.argsort(dim=-1, descending=True)  # [B, Na]
    return Proposals(best_score, best_b, order, metric.shape[1], num_protected)


ORDERS = ("position", "score")  # where bipartite_plan puts the unmerged A tokens


def check_order(order: str, is_a: torch.Tensor | None = None) -> None:
    """ValueError for an unknown ``order``, or ``"score"`` with a split other than the alternating one."""
    if order not in ORDERS:
        raise ValueError(f"unknown ToMe order {order!r}: choose 'position' or 'score'")
    if order == "score" and is_a is not None:
        raise ValueError("ToMe's order 'score' needs the alternating A/B split (is_a=None)")


def plan_from_proposals(proposals: Proposals, r: int, order: str = "position") -> MergePlan:
    """Merge the ``r`` best proposals (``0 < r <= max_removable``). Output order: protected tokens
    (positions 0..P-1), kept A (ascending, or by descending best match with ``order="score"``), then
    the unprotected B tokens."""
    best_score, best_b, order, by_score = proposals.best_score, proposals.best_b, proposals.order, order == "score"
    num_tokens, num_protected = proposals.num_tokens, proposals.num_protected
    batch, num_a = best_score.shape
    num_b = num_tokens - num_a
    device = best_score.device
    protected_a, protected_b = (num_protected + 1) // 2, num_protected // 2
    src_a = order[:, :r]  # [B, r] A indices that merge away
    kept_a = _kept_a(order[:, r:], protected_a, by_score=by_score)  # [B, Na - r - pa]
    num_kept_a = kept_a.shape[1]
    keep = torch.cat(
        [
            _arange(0, num_protected, 1, device).expand(batch, -1),
            2 * kept_a,
            _arange(2 * protected_b + 1, 2 * num_b + 1, 2, device).expand(batch, -1),  # B positions
        ],
        dim=1,
    )  # [B, N - r]
    num_out = num_tokens - r
    dst = torch.empty(batch, num_tokens, dtype=torch.long, device=device)
    dst.scatter_(1, keep, _arange(0, num_out, 1, device).expand(batch, -1))
    target_b = best_b.gather(1, src_a)  # [B, r]
    src = 2 * src_a
    dst.scatter_(1, src, num_protected + num_kept_a + target_b - protected_b)
    edges = MergeEdges(src=src, dst=2 * target_b + 1, score=best_score.gather(1, src_a))
    return MergePlan(dst=dst, num_out=num_out, edges=edges, keep=keep)


def _kept_a(unmerged: torch.Tensor, protected_a: int, by_score: bool) -> torch.Tensor:
    """The unprotected ones of the unmerged A indices ``[B, Na - r]`` (given best match first; the
    protected ``0..pa-1`` never merge): ascending, or in the given order with ``by_score``."""
    if not by_score:
        return unmerged.sort(dim=-1).values[:, protected_a:]
    if protected_a == 0:
        return unmerged
    return unmerged[unmerged >= protected_a].view(unmerged.shape[0], -1)


def _general_plan(
    metric: torch.Tensor, r: int, num_protected: int, valid: torch.Tensor | None, is_a: torch.Tensor
) -> MergePlan:
    """Any A/B split given by ``is_a`` ``[N]`` bool."""
    batch, num_tokens, _ = metric.shape
    device = metric.device
    positions = torch.arange(num_tokens, device=device)
    a_pos = positions[is_a]  # [Na]
    b_pos = positions[~is_a]  # [Nb]
    scores = _scores(metric[:, a_pos], metric[:, b_pos])  # [B, Na, Nb]
    scores[:, a_pos < num_protected, :] = -torch.inf
    scores[:, :, b_pos < num_protected] = -torch.inf
    if valid is not None:
        scores = _mask_padding(scores, valid[:, a_pos], valid[:, b_pos])

    best_score, best_b = scores.max(dim=-1)  # [B, Na]
    order = best_score.argsort(dim=-1, descending=True)  # [B, Na]
    src_a = order[:, :r]  # [B, r]
    merged = torch.zeros_like(best_score, dtype=torch.bool).scatter_(1, src_a, True)  # [B, Na]
    num_a, num_b = a_pos.numel(), b_pos.numel()
    a_protected = (a_pos < num_protected).expand(batch, num_a)
    b_protected = (b_pos < num_protected).expand(batch, num_b)
    # Output order: protected (they are the first tokens), kept unprotected A, unprotected B.
    rank_a = (~merged & ~a_protected).long().cumsum(1) - 1  # [B, Na]
    num_kept_a = num_a - r - int(a_protected[0].sum())
    out_b = num_protected + num_kept_a + (~b_protected).long().cumsum(1) - 1  # [B, Nb]
    out_b = torch.where(b_protected, b_pos.expand(batch, num_b), out_b)
    out_a = torch.where(a_protected, a_pos.expand(batch, num_a), num_protected + rank_a)
    out_a = torch.where(merged, out_b.gather(1, best_b), out_a)

    dst = torch.empty(batch, num_tokens, dtype=torch.long, device=device)
    dst[:, a_pos] = out_a
    dst[:, b_pos] = out_b
    src = a_pos[src_a]  # [B, r]
    representative = torch.ones(batch, num_tokens, dtype=torch.bool, device=device).scatter_(1, src, False)
    keep = torch.empty(batch, num_tokens - r, dtype=torch.long, device=device)
    keep.scatter_(1, dst[representative].view(batch, -1), positions.expand(batch, -1)[representative].view(batch, -1))
    edges = MergeEdges(src=src, dst=b_pos[best_b.gather(1, src_a)], score=best_score.gather(1, src_a))
    return MergePlan(dst=dst, num_out=num_tokens - r, edges=edges, keep=keep)


class ToMe(MergeMethod):
    """Bipartite soft matching on the attention keys.

    order: where the unmerged A tokens go (:func:`bipartite_plan`): ``"position"`` (tomviz's default)
    or ``"score"`` (the reference code without a class token; the TinyChart preset).
    """

    name = "tome"
    label = "ToMe (bipartite soft matching)"

    def __init__(self, order: str = "position"):
        check_order(order)
        self.order = order

    def plan_removal(self, inputs: MergeInputs, r: int) -> MergePlan:
        return bipartite_plan(inputs.metric, r, inputs.num_protected, inputs.valid, order=self.order)
