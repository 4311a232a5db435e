"""FrameFusion's merging rule at its first layer: same-position tokens of adjacent frames fuse.

Fu et al., "FrameFusion: Combining Similarity and Importance for Video Token Reduction on Large
Vision Language Models" (2025). Reproduces thu-nics/FrameFusion @fbec1d2 ``framefusion/main.py``:
``FrameFusion.forward`` (the merging branch), ``compute_similarity_and_token_index_by_patch``,
``merge_tokens_and_get_mask``, ``_compute_pruning_ratio`` and ``find_contigious_latter_index``, for the
first call of a prefill (empty sparsity list). The rule:

1. every token is compared (cosine) with the token at the same position in the previous frame; first-frame
   tokens are never compared;
2. tokens with similarity ≥ ``similarity_threshold`` (0.6) qualify;
3. the cost budget caps the share of tokens merged at this layer: with an empty history
   ``_compute_pruning_ratio([], cost, num_layers)`` is ``1 - cost`` (0.7 for the default cost 0.3), or 0
   when ``cost >= 1``; when the qualifying share reaches the cap, only the ``int(cap * T * N)`` most similar
   qualify;
4. at each position, a run of consecutive qualifying frames is averaged (plain mean) into the token just
   before the run, which keeps its place; kept tokens stay in sequence (frame-major) order.

Deliberate differences: the original runs inside the LLM (LLaVA-Video, Qwen2-VL, ...) on its hidden
states, at layer 0 before attention and again after attention in later layers, then prunes by the last
token's attention once fewer than 10 % qualify; here the rule is applied once to per-frame vision tokens
(no LLM, no later layers, no attention pruning). Float sums: the original adds members in place
(``index_add_``) and divides; a mean here — equal up to rounding. Checked beside the original code (run
outside this repository) on 200 seeded random clips, 68 of them over the budget: equal kept tokens, in order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tomviz.merge.temporal.base import TemporalReduction, check_tokens, mean_by_group


def merge_budget(cost: float) -> float:
    """The cap on the share of tokens merged at the first layer: FrameFusion's
    ``_compute_pruning_ratio([], cost, L)`` = ``1 - cost``, or 0 when ``cost >= 1`` (independent of L)."""
    if cost <= 0:
        raise ValueError(f"FrameFusion's cost must be positive, got {cost}")
    return max(0.0, 1.0 - cost)


def adjacent_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """``[T, N]`` cosine of each token with the same position in the previous frame; frame 0 gets -2."""
    first = torch.full_like(tokens[:1, :, 0], -2.0)
    return torch.cat([first, F.cosine_similarity(tokens[1:], tokens[:-1], dim=-1)], dim=0)


def framefusion(tokens: torch.Tensor, similarity_threshold: float = 0.6, cost: float = 0.3) -> TemporalReduction:
    """Fuse same-position runs of similar adjacent frames. tokens: ``[T, N, C]``."""
    num_frames, per_frame, channels = check_tokens(tokens)
    similarity = adjacent_similarity(tokens)  # [T, N]
    fuse = similarity >= similarity_threshold  # [T, N]
    cap = merge_budget(cost)
    total = num_frames * per_frame
    if fuse.sum() / total >= cap:  # over budget: only the most similar int(cap * T * N) fuse
        # the original ranks in position-major order; topk ties aside, the set is the same
        chosen = similarity.t().flatten().topk(int(cap * total)).indices  # [k] into position-major order
        fuse = torch.zeros(per_frame * num_frames, dtype=torch.bool, device=tokens.device)
        fuse[chosen] = True
        fuse = fuse.view(per_frame, num_frames).t()
    frame = torch.arange(num_frames, device=tokens.device).unsqueeze(1).expand(-1, per_frame)
    starts = torch.where(fuse, -1, frame)  # frames that keep their token; -1 where the token fuses back
    anchor_frame = starts.cummax(dim=0).values  # [T, N] the frame whose token each one fuses into
    anchor = anchor_frame * per_frame + torch.arange(per_frame, device=tokens.device)  # [T, N] frame-major index
    kept = ~fuse.flatten()  # [T*N]
    slot = kept.long().cumsum(0) - 1  # output index of each kept token (frame-major order)
    group = slot[anchor.flatten()]
    position = kept.nonzero().flatten()
    merged = mean_by_group(tokens.reshape(total, channels), group, position.numel())
    return TemporalReduction(merged, group, position, num_frames, per_frame)
