"""FastVID: dynamic segmentation, then per-frame salient tokens plus density-peak anchors.

Shen et al., "FastVID: Dynamic Density Pruning for Fast Video Large Language Models" (2025). Reproduces
LunarShen/FastVID @a40a109 ``fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py``,
``Qwen2Model.forward`` (the block marked FastVID: DySeg, STPrune, "Compute Anchor Token Distribution", ATS,
"Parallel Density Score Computation", DTM for single- and multi-frame segments), with the defaults of
``lmms_eval/models/llava_onevision.py`` (retention 0.10, DySeg c = 8, τ = 0.9, STPrune d = 0.4, DTM p = 4,
β = 0.6). The rule:

1. DySeg: ``sim[t]`` = cosine of the global features of frames t and t+1; a segment ends after frame t
   when ``sim[t]`` is among the ``c - 1`` smallest or below τ.
2. Per frame ``retain = int(N * retention)`` tokens: ``salient = retain - int(retain * d)`` by attention
   (ATS, kept as they are) and ``context = retain - salient`` anchors from the other tokens.
3. Anchors are spread over a segment of s frames: the frames ``s-1, s-1-p, ...`` counted from its end each
   get ``(context * s) // ceil(s / p)`` anchors, the others none; a one-frame segment keeps ``context``.
4. Density scores (DPC-KNN, k = 4, :mod:`tomviz.merge.temporal.density`) are computed within each frame over
   its non-salient tokens; a frame's anchors are its top scores.
5. DTM: the candidate tokens (the frame's own for a one-frame segment; every non-salient token of the
   segment for an anchor frame of a longer one) go to their most cosine-similar anchor; an anchor becomes
   ``w * anchor + (1 - w) * mean(assigned)``, ``w = max(1 / (assigned + 1), β)``.
6. Output in input order (frame-major); every kept token keeps its original position.

Partition: in a segment of several frames each anchor frame averages *all* the segment's candidates, so
the original's averages overlap (a token counts in every anchor frame of its segment). The values here are
the original's; the group shown for a candidate is its most similar anchor over all the segment's anchor
frames (ties: the earliest), and an anchor is in its own group. Deliberate differences: the original's
tokens are LLaVA-OneVision's projected, pooled SigLIP features inside the LLM and its frame feature and
attention come from SigLIP's pooling head; here any ``[T, N, C]`` tokens with any ``[T, C']`` frame
features and ``[T, N]`` importance (on the embedded DINOv2, its CLS token and CLS attention stand in for
the pooling head's output and attention). Distances in float64 without the 1e-6 tie-break noise; ``c - 1``
is capped at the ``T - 1`` steps, k and a frame's anchors at its candidates, and with no anchors
(``context == 0``) the non-salient tokens are dropped — where the original raises an IndexError.
Checked beside the original block (run outside this repository, its noise set to zero) on 130 seeded
random clips: equal kept positions and values (20 more made the original raise).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tomviz.merge.plan import PRUNED
from tomviz.merge.temporal.base import TemporalReduction, check_ratio, check_tokens
from tomviz.merge.temporal.density import density_peak_scores


def dynamic_segments(frame_features: torch.Tensor, num_cuts_plus_one: int = 8, tau: float = 0.9) -> list[tuple[int, int]]:
    """DySeg: inclusive (start, end) frame ranges. frame_features: ``[T, C']``."""
    num_frames = frame_features.shape[0]
    unit = F.normalize(frame_features.double(), dim=-1)
    similarity = (unit[:-1] * unit[1:]).sum(dim=1)  # [T-1]
    smallest = similarity.topk(min(num_cuts_plus_one - 1, num_frames - 1), largest=False).indices
    cuts = sorted(set(smallest.tolist()) | set((similarity < tau).nonzero().flatten().tolist()))
    bounds = [-1] + cuts + [num_frames - 1]
    return [(bounds[i] + 1, bounds[i + 1]) for i in range(len(bounds) - 1)]


def anchor_counts(segments: list[tuple[int, int]], context: int, every: int) -> list[int]:
    """Anchors per frame (step 3): ``(context * s) // ceil(s / p)`` on every p-th frame from a segment's end."""
    counts = []
    for start, end in segments:
        size = end - start + 1
        share = context * size // math.ceil(size / every)
        counts += [share if (end - frame) % every == 0 else 0 for frame in range(start, end + 1)]
    return counts


def fastvid(
    tokens: torch.Tensor,
    attention: torch.Tensor,
    frame_features: torch.Tensor,
    retention: float = 0.10,
    num_segments: int = 8,
    tau: float = 0.9,
    context_share: float = 0.4,
    anchor_every: int = 4,
    beta: float = 0.6,
) -> TemporalReduction:
    """FastVID. tokens ``[T, N, C]``, attention ``[T, N]``, frame_features ``[T, C']``."""
    num_frames, per_frame, _ = check_tokens(tokens)
    if attention.shape != (num_frames, per_frame):
        raise ValueError(f"fastvid: attention must be one importance per token, [T, N] = {[num_frames, per_frame]}, "
                         f"got {list(attention.shape)}")
    if frame_features.ndim != 2 or frame_features.shape[0] != num_frames:
        raise ValueError(f"fastvid: frame features must be [T, C'] with T = {num_frames}, got {list(frame_features.shape)}")
    retain = int(per_frame * check_ratio("retention", retention))
    salient_num = retain - int(retain * context_share)
    context = retain - salient_num
    segments = dynamic_segments(frame_features, num_segments, tau)
    counts = anchor_counts(segments, context, anchor_every)
    salient = attention.topk(salient_num, dim=1).indices  # [T, S]
    is_candidate = torch.ones(num_frames, per_frame, dtype=torch.bool, device=tokens.device)
    is_candidate.scatter_(1, salient, False)
    candidates = is_candidate.nonzero()[:, 1].view(num_frames, per_frame - salient_num)  # [T, N'] ascending
    scores = torch.stack([density_peak_scores(tokens[t, candidates[t]], 4)[0] for t in range(num_frames)])
    kept = _Kept(tokens)
    for frame in range(num_frames):  # salient tokens stay alone
        kept.group[frame, salient[frame]] = kept.add(frame * per_frame + salient[frame], tokens[frame, salient[frame]])
    for start, end in segments if context > 0 else ():  # no anchors: the non-salient tokens are dropped
        if end == start:
            jobs = [([t], [t]) for t in range(start, end + 1) if counts[t] == context]
        else:
            jobs = [(list(range(start, end + 1)), [t for t in range(start, end + 1) if counts[t] > context])]
        for pool_frames, anchor_frames in jobs:
            _merge_into_anchors(kept, candidates, scores, counts, pool_frames, anchor_frames, beta)
    return kept.reduction(segments)


class _Kept:
    """Kept tokens collected in any order, with the group of every input token (provisional slots)."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens
        self.group = torch.full(tokens.shape[:2], PRUNED, dtype=torch.long, device=tokens.device)  # [T, N]
        self.places: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.count = 0

    def add(self, places: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Append ``[K]`` places and ``[K, C]`` values; returns their ``[K]`` provisional slots."""
        self.places.append(places)
        self.values.append(values)
        self.count += places.numel()
        return torch.arange(self.count - places.numel(), self.count, device=places.device)

    def reduction(self, segments) -> TemporalReduction:
        """Kept tokens in input order (frame-major), as the original sorts them by position."""
        places = torch.cat(self.places)
        order = places.argsort()
        renumber = torch.empty_like(order)
        renumber[order] = torch.arange(order.numel(), device=order.device)
        group = self.group.flatten()
        group = torch.where(group >= 0, renumber[group.clamp(min=0)], PRUNED)
        num_frames, per_frame, _ = self.tokens.shape
        return TemporalReduction(torch.cat(self.values)[order], group, places[order], num_frames, per_frame, tuple(segments))


def _merge_into_anchors(kept: _Kept, candidates, scores, counts, pool_frames: list[int], anchor_frames: list[int], beta: float) -> None:
    """DTM (step 5): each anchor frame's anchors average the pool; each pool token joins its nearest anchor.
    candidates ``[T, N']`` positions of the non-salient tokens; scores ``[T, N']`` their density scores."""
    tokens, per_frame = kept.tokens, kept.tokens.shape[1]
    pool_index = torch.cat([t * per_frame + candidates[t] for t in pool_frames])  # [P] frame-major indices
    pool = tokens.flatten(0, 1)[pool_index]  # [P, C]
    pool_unit = F.normalize(pool, dim=-1)
    slots, similarities = [], []
    for frame in anchor_frames:
        count = min(counts[frame], candidates.shape[1])  # the original fails when the share exceeds the candidates
        chosen = candidates[frame][scores[frame].topk(count).indices]  # [K] positions in the frame
        anchors = tokens[frame, chosen]  # [K, C]
        similarity = pool_unit @ F.normalize(anchors, dim=-1).t()  # [P, K]
        assign = F.one_hot(similarity.argmax(dim=1), chosen.numel()).to(pool.dtype)  # [P, K]
        assigned = assign.sum(dim=0)[:, None]  # [K, 1]
        weight = (1 / (assigned + 1)).clamp(min=beta)
        merged = weight * anchors + (1 - weight) * (assign.t() @ pool) / assigned.clamp(min=1)
        slots.append(kept.add(frame * per_frame + chosen, merged))
        similarities.append(similarity)
    slots = torch.cat(slots)  # [A]
    nearest = torch.cat(similarities, dim=1).argmax(dim=1)  # [P] over every anchor frame; ties: the earliest
    flat_group = kept.group.view(-1)
    flat_group[pool_index] = slots[nearest]
    flat_group[torch.cat(kept.places[-len(anchor_frames):])] = slots  # an anchor is in its own group
