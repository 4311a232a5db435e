"""Merging within segments: a method planned on each contiguous run of tokens alone, its plans joined.

A model that attends within segments of one sequence (Qwen2-VL's vision tower: within each image; Qwen2.5-VL's:
within windows of 8 x 8 patches in most blocks) stays valid only while no merged token spans two segments. Here
the method plans each segment on its own slice of the layer's inputs, with a share of the layer's ``r`` in
proportion to the segment's length (largest remainders first, none above what the segment can remove), and the
plans are joined: each segment's outputs follow the previous segment's, so the segments stay contiguous runs
and the model's segment lengths (``cu_seqlens``) are the output counts. Batch 1 only (one sequence).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from tomviz.merge.base import MergeInputs, MergeMethod
from tomviz.merge.plan import MergeEdges, MergePlan


def segment_runs(segments: torch.Tensor) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` the contiguous runs of equal ids in ``segments`` ``[N]``; an id that appears in two
    runs is an error (the segments of a sequence must be contiguous)."""
    if segments.numel() == 0:
        return []
    starts = [0] + (torch.nonzero(segments[1:] != segments[:-1])[:, 0] + 1).tolist()
    ends = starts[1:] + [segments.numel()]
    ids = segments[torch.tensor(starts, device=segments.device)]
    if ids.unique().numel() != len(starts):
        raise ValueError("the segments of a sequence must be contiguous runs of tokens")
    return list(zip(starts, ends))


def share_removal(r: int, lengths: list[int], capacities: list[int]) -> list[int]:
    """``r`` split over segments of ``lengths`` tokens in proportion to their lengths (largest remainders first),
    none above its capacity; what a full segment cannot take goes to the others. The shares add up to
    ``min(r, sum(capacities))``."""
    total = sum(lengths)
    r = min(r, sum(capacities))
    if r <= 0 or total == 0:
        return [0] * len(lengths)
    exact = [r * n / total for n in lengths]
    shares = [min(int(e), c) for e, c in zip(exact, capacities)]
    by_remainder = sorted(range(len(lengths)), key=lambda i: (-(exact[i] - int(exact[i])), i))
    while sum(shares) < r:
        open_ = [i for i in by_remainder if shares[i] < capacities[i]]
        for i in open_[: r - sum(shares)]:
            shares[i] += 1
    return shares


def slice_inputs(inputs: MergeInputs, start: int, end: int) -> MergeInputs:
    """The layer's inputs of tokens ``start:end`` alone (protected tokens count only where they lie)."""
    def cut(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor[:, start:end]

    attention = None if inputs.attention is None else inputs.attention[:, start:end, start:end]
    return replace(inputs, metric=cut(inputs.metric), hidden=cut(inputs.hidden), cls_attention=cut(inputs.cls_attention),
                   sizes=cut(inputs.sizes), valid=cut(inputs.valid), positions=cut(inputs.positions), attention=attention,
                   num_protected=max(0, min(inputs.num_protected - start, end - start)), history={})


def plan_within_segments(method: MergeMethod, inputs: MergeInputs, r: int, segments: torch.Tensor) -> MergePlan:
    """``method``'s plan removing up to ``r`` tokens with every group inside one segment. inputs: batch 1, ``N``
    tokens; segments: ``[N]`` long, the segment of each token (contiguous runs)."""
    if inputs.metric.shape[0] != 1:
        raise ValueError(f"merging within segments takes one sequence, got a batch of {inputs.metric.shape[0]}")
    runs = segment_runs(segments)
    if len(runs) == 1:
        return method.plan(inputs, r)
    if inputs.history:
        raise ValueError(f"{method.name} reads earlier layers' attention maps, which merging within segments "
                         "does not slice")
    pieces = [slice_inputs(inputs, start, end) for start, end in runs]
    shares = share_removal(r, [end - start for start, end in runs], [method.removable(p) for p in pieces])
    plans = [method.plan(piece, share) for piece, share in zip(pieces, shares)]
    return join_plans(plans, [piece.sizes for piece in pieces])


def join_plans(plans: list[MergePlan], sizes: list[torch.Tensor | None]) -> MergePlan:
    """One plan over the concatenated segments (batch 1): each plan's outputs after the previous ones'.
    ``sizes``: each segment's ``[1, n, 1]`` token sizes (None = ones), for a plan with its own mean weights."""
    if any(plan.ragged for plan in plans):
        raise ValueError("merging within segments takes plans with one count per sequence")
    in_offsets, out_offsets = [0], [0]
    for plan in plans:
        in_offsets.append(in_offsets[-1] + plan.num_in)
        out_offsets.append(out_offsets[-1] + plan.num_out)
    dst = torch.cat([torch.where(p.dst < 0, p.dst, p.dst + o) for p, o in zip(plans, out_offsets)], dim=1)
    edges = [(p.edges, o) for p, o in zip(plans, in_offsets) if p.edges is not None]
    joined_edges = None
    if edges:
        joined_edges = MergeEdges(src=torch.cat([e.src + o for e, o in edges], dim=1),
                                  dst=torch.cat([e.dst + o for e, o in edges], dim=1),
                                  score=torch.cat([e.score for e, _ in edges], dim=1))
    keep = None
    if joined_edges is not None and all(p.keep is not None or p.is_identity for p in plans):
        keep = torch.cat([(p.keep if p.keep is not None else p.dst) + o for p, o in zip(plans, in_offsets)], dim=1)
    mean_weights = size_factors = None
    if any(p.mean_weights is not None for p in plans):
        mean_weights = torch.cat([_weights(p.mean_weights, s, p.num_in, p.dst.device) for p, s in zip(plans, sizes)], 1)
    if any(p.size_factors is not None for p in plans):
        size_factors = torch.cat([_weights(p.size_factors, None, p.num_in, p.dst.device) for p in plans], 1)
    return MergePlan(dst=dst, num_out=out_offsets[-1], edges=joined_edges, keep=keep, mean_weights=mean_weights,
                     size_factors=size_factors)


def _weights(given: torch.Tensor | None, default: torch.Tensor | None, num_in: int, device: torch.device) -> torch.Tensor:
    """``[1, n, 1]``: a plan's own weights, else ``default`` (the segment's sizes), else ones."""
    if given is not None:
        return given
    if default is not None:
        return default.float()
    return torch.ones(1, num_in, 1, device=device)
