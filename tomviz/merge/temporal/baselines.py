"""Baselines for a clip's tokens: frame dropping, and ToMe's matching over all frames' tokens at once.

* :func:`drop_frames` keeps ``max(1, round(T * retain))`` whole frames spread evenly over the clip
  (``round(linspace(0, T - 1, k))``) and drops the others: the uniform frame sampling every video method
  is compared with.
* :func:`tome_all_frames` flattens the clip to one sequence of ``T * N`` tokens (frame-major) and applies
  ToMe's bipartite soft matching (:func:`tomviz.merge.tome.bipartite_plan`, the project's one ToMe rule) in
  rounds — each round removes at most half the tokens — until ``round(T * N * retain)`` remain. Merging is
  ToMe's size-weighted mean; each round matches on the merged tokens. As the ToMe paper's video results
  (Bolya et al., ICLR 2023, Spatiotemporal MAE), space and time are merged jointly; no token is protected.
* :func:`random_all_frames` is the same with the project's ``random`` rule: a seeded random A/B split
  (:func:`tomviz.merge.random_.random_split`, seed ``seed + round``) instead of ToMe's alternating one.
"""
from __future__ import annotations

import torch

from tomviz.merge.plan import PRUNED
from tomviz.merge.random_ import random_split
from tomviz.merge.temporal.base import TemporalReduction, check_ratio, check_tokens, reduction_from_keep
from tomviz.merge.tome import bipartite_plan


def drop_frames(tokens: torch.Tensor, retain: float) -> TemporalReduction:
    """Keep ``max(1, round(T * retain))`` evenly spaced frames whole. tokens: ``[T, N, C]``."""
    num_frames, per_frame, _ = check_tokens(tokens)
    count = max(1, round(num_frames * check_ratio("retain", retain)))
    if count == 1:
        kept_frames = torch.zeros(1, dtype=torch.long)
    else:
        kept_frames = torch.linspace(0, num_frames - 1, count, dtype=torch.float64).round().long().unique()
    keep = torch.zeros(num_frames, per_frame, dtype=torch.bool, device=tokens.device)
    keep[kept_frames.to(tokens.device)] = True
    return reduction_from_keep(tokens, keep.flatten())


def tome_all_frames(tokens: torch.Tensor, retain: float) -> TemporalReduction:
    """ToMe over the ``T * N`` tokens of all frames until ``round(T * N * retain)`` remain (at least 1)."""
    return _bipartite_rounds(tokens, retain, seed=None)


def random_all_frames(tokens: torch.Tensor, retain: float, seed: int = 0) -> TemporalReduction:
    """As :func:`tome_all_frames` with a seeded random A/B split in every round."""
    return _bipartite_rounds(tokens, retain, seed=int(seed))


def _bipartite_rounds(tokens: torch.Tensor, retain: float, seed: int | None) -> TemporalReduction:
    num_frames, per_frame, channels = check_tokens(tokens)
    total = num_frames * per_frame
    target = max(1, round(total * check_ratio("retain", retain)))
    x = tokens.reshape(1, total, channels)  # [1, L, C]
    sizes = torch.ones(1, total, 1, dtype=tokens.dtype, device=tokens.device)
    source = torch.arange(total, device=tokens.device).unsqueeze(0)  # [1, L0] current token of each input
    position = source.clone()  # [1, L] input index whose place each current token takes
    round_index = 0
    while x.shape[1] > target:
        current = x.shape[1]
        r = min(current - target, current // 2)
        is_a = None if seed is None else random_split(current, 0, seed + round_index).to(tokens.device)
        plan = bipartite_plan(x, r, num_protected=0, is_a=is_a)
        x, sizes = plan.merge(x, sizes)
        source = plan.compose(source)
        position = position.gather(1, plan.keep)  # a kept slot keeps its representative's place
        round_index += 1
    group = source[0]
    assert int(group.min()) > PRUNED  # merging only
    return TemporalReduction(x[0], group, position[0], num_frames, per_frame)
