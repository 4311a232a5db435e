"""AIM (Zhong et al., "AIM: Adaptive Inference of Multi-Modal LLMs via Token Merging and Pruning",
arXiv 2412.03248) as its authors' code does it: pure tensor math, no model knowledge.

Two stages, read from LaVi-Lab/AIM @edc24e9:

**Merging before the LLM** (``llava/model/token_merge.py`` ``bipartite_soft_matching_merge``): ToMe's
bipartite matching (A = even positions, B = odd) on a metric, cosine, nothing protected; the ``r``
A tokens with the best match (``argsort`` descending) merge into their B partner, which becomes the
**plain mean** of itself and its sources (``scatter_reduce(.., "mean")``: no sizes carried, no
proportional attention). Output order: the unmerged A tokens in descending best-match order, then the
B tokens in order. Schedules (:func:`merge_schedule`):

* ``"onevision"`` (``llava/model/llava_arch.py`` ``get_2dPool``): video frames only, after the
  projector and the 2x2 pooling (27x27 → 14x14 = 196); metric = the features; ``r = n // 2`` then
  ``r = n // 4`` of the pooled count ``n`` (196 → 98 → 49).
* ``"llava15"`` (``other_packages/LLaVA-PruMerge/llava/model/multimodal_encoder/clip_encoder.py``
  ``CLIPVisionTower.forward``): per image, metric = the keys (``k_proj`` output, all heads) of CLIP's
  last layer without CLS, merged alongside with the same plain mean; ``r = 288`` then ``36``
  (576 → 288 → 252).

**Pruning inside the LLM** (``other_packages/transformers/src/transformers/models/qwen2/
modeling_qwen2.py`` ``get_importance`` and ``Qwen2Model.forward``; the same in
``other_packages/LLaVA-PruMerge/modeling_llama.py``): in every prefill layer, the pre-softmax logits
(scaled, plus the causal and pruning mask) → softmax at temperature 0.1 → 5 PageRank steps from the
uniform distribution (no damping) → root mean square over heads (:func:`pagerank_scores`). After layer
``l``: text tokens score 1, already-pruned tokens -1; keep the ``int(P + (N - P) * rate[l])`` highest
(``torch.sort`` descending; ``P`` = text tokens, ``N - P`` = the **original** visual count), where
``rate[l] = max(0, 1 - (l - S + 1) / 8)`` from layer ``S`` on and 1 before (:func:`retain_rates`;
``S = 14`` of 28 layers for Qwen2, ``13`` of 32 for LLaMA: the first pruning happens after layer
``S`` and no visual token is left after layer ``S + 7``). Pruning is a key **mask**
(:func:`keep_mask`): the tokens stay, keep their positions and cache entries, and their rows still
take part in the next PageRank rounds. Physical dropping (:func:`kept_positions`) is an option that
removes them instead.

Deliberate differences: each batch element uses its own text count (the original takes batch
element 0's for all); the original prunes only under eager attention, these functions take the
logits from whichever kernel the caller recomputes them with.
"""
from __future__ import annotations

import torch

from tomviz.merge.plan import MergePlan
from tomviz.merge.tome import bipartite_plan

TEMPERATURE = 0.1  # get_importance(tau_imp=0.1)
PAGERANK_STEPS = 5  # get_importance(iters=5)
START_LAYER = {28: 14, 32: 13}  # Qwen2 (LLaVA-OneVision-7B) and LLaMA (LLaVA-1.5-7B) schedules
RATE_STEP = 0.125


def bipartite_plan_score_order(metric: torch.Tensor, r: int) -> MergePlan:
    """ToMe's matching as its reference code orders it without protected tokens (facebookresearch/ToMe
    ``tome/merge.py`` ``bipartite_soft_matching`` with ``class_token=False``; AIM's and TinyChart's copies):
    :func:`tomviz.merge.tome.bipartite_plan` with ``order="score"`` and nothing protected.

    metric: ``[B, N, C]`` (cosine). Returns a plan with ``N - r`` outputs (``r`` clipped to ``N // 2``):
    the unmerged A tokens in descending best-match order, then the ``Nb`` B tokens in order. AIM applies
    it with ``plan.merge(x, None)`` (equal sizes: each group the plain mean).
    """
    return bipartite_plan(metric, r, num_protected=0, order="score")


def merge_schedule(num_tokens: int, variant: str = "onevision") -> list[int]:
    """The authors' per-frame / per-image ``r`` list for ``num_tokens`` tokens.

    ``"onevision"``: ``[n // 2, n // 4]`` (196 → 98 → 49); ``"llava15"``: ``[n // 2, n // 16]``
    (576 → 288 → 252, the original's hard-coded 288 and 36).
    """
    if variant == "onevision":
        return [num_tokens // 2, num_tokens // 4]
    if variant == "llava15":
        return [num_tokens // 2, num_tokens // 16]
    raise ValueError(f"unknown AIM merge schedule {variant!r}: choose 'onevision' or 'llava15'")


def merge_steps(num_tokens: int, keep: int) -> list[int]:
    """The ``r`` of each plain-mean step from ``num_tokens`` down to ``keep`` tokens, each at most half
    (``min(n // 2, n - keep)``). The authors' schedules are its cases: 196 → 49 gives ``[98, 49]``
    (``"onevision"``), 576 → 252 gives ``[288, 36]`` (``"llava15"``)."""
    if not 1 <= keep <= num_tokens:
        raise ValueError(f"AIM cannot merge {num_tokens} tokens down to {keep}")
    steps = []
    while num_tokens > keep:
        steps.append(min(num_tokens // 2, num_tokens - keep))
        num_tokens -= steps[-1]
    return steps


def default_start(num_layers: int) -> int:
    """The first pruning layer ``S``: the authors' 14 of 28 (Qwen2) and 13 of 32 (LLaMA); for other depths
    half the layers (tomviz's choice: the authors give none)."""
    return START_LAYER.get(num_layers, num_layers // 2)


def aim_merge(
    features: torch.Tensor, schedule: list[int], metric: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """AIM's merging before the LLM, one frame or image per batch element.

    features: ``[B, N, D]``; schedule: ``r`` per step (:func:`merge_schedule`); metric: ``[B, N, C]``
    (None = the features themselves, the OneVision variant), merged alongside by the same plain mean.
    Returns (``[B, N', D]`` merged features, ``[B, N]`` long: the output token each input joined).
    """
    batch, num_tokens, _ = features.shape
    source = torch.arange(num_tokens, device=features.device).expand(batch, -1)
    for r in schedule:
        plan = bipartite_plan_score_order(features if metric is None else metric, r)
        features = plan.merge(features, None)[0]
        if metric is not None:
            metric = plan.merge(metric, None)[0]
        source = plan.compose(source)
    return features, source


def pagerank_scores(
    logits: torch.Tensor, temperature: float = TEMPERATURE, steps: int = PAGERANK_STEPS, damping: float = 0.0
) -> torch.Tensor:
    """AIM's importance of every token: ``[B, H, N, N]`` pre-softmax logits (scaled, with the causal
    and pruning mask added) → ``[B, N]``.

    ``M = softmax(logits / temperature)`` per head; ``p ← p M (1 - damping) + damping / N`` ``steps``
    times from ``p = 1 / N``; the result is the root mean square of ``p`` over heads.
    """
    batch, heads, num_tokens, _ = logits.shape
    transition = torch.softmax(logits / temperature, dim=-1, dtype=torch.float32)  # [B, H, N, N]
    dist = torch.full((batch, heads, 1, num_tokens), 1.0 / num_tokens, dtype=torch.float32, device=logits.device)
    for _ in range(steps):
        dist = (dist @ transition) * (1 - damping) + damping / num_tokens
    return dist.pow(2).mean(dim=1).pow(0.5).view(batch, num_tokens)


def retain_rates(num_layers: int, start: int | None = None, step: float = RATE_STEP) -> list[float]:
    """``[num_layers]`` fraction of the original visual tokens kept after each layer:
    1 before ``start``, then ``max(0, 1 - (l - start + 1) * step)`` (``start`` default: 14 of 28, 13 of 32)."""
    if start is None:
        if num_layers not in START_LAYER:
            raise ValueError(f"AIM's authors give a schedule for 28 or 32 layers, not {num_layers}: pass start")
        start = START_LAYER[num_layers]
    return [max(0.0, 1.0 - (layer - start + 1) * step) if layer >= start else 1.0 for layer in range(num_layers)]


def keep_mask(scores: torch.Tensor, active: torch.Tensor, protected: torch.Tensor, rate: float) -> torch.Tensor:
    """The tokens still attended to after a layer with retain rate ``rate``.

    scores: ``[B, N]`` (:func:`pagerank_scores`); active: ``[B, N]`` bool, not pruned so far;
    protected: ``[B, N]`` bool, the text tokens (always kept). Returns ``active`` AND the
    ``int(P + (N - P) * rate)`` highest-scoring tokens (text 1, pruned -1; ``torch.sort`` descending).
    """
    if rate >= 1.0:
        return active
    ranked = scores.masked_fill(~active, -1.0).masked_fill(protected, 1.0)
    order = torch.sort(ranked, dim=-1, descending=True).indices  # [B, N]
    num_tokens = scores.shape[1]
    keep = torch.zeros_like(active)
    for row, num_protected in enumerate(protected.sum(dim=1).tolist()):
        count = int((num_tokens - num_protected) * rate + num_protected)
        keep[row, order[row, :count]] = True
    return active & keep


def key_bias(active: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, 1, 1, N]`` additive attention bias that masks the pruned keys (``active`` ``[B, N]`` False)."""
    return torch.zeros(active.shape, dtype=dtype, device=active.device).masked_fill(~active, torch.finfo(dtype).min)[:, None, None]


def kept_positions(active: torch.Tensor) -> torch.Tensor:
    """Physical dropping instead of masking: ``[B, K]`` the positions of the active tokens, ascending
    (every batch element must keep the same count). They keep their original position ids."""
    counts = active.sum(dim=1)
    if not bool((counts == counts[0]).all()):
        raise ValueError("physical dropping needs the same number of kept tokens in every batch element")
    return active.nonzero()[:, 1].view(active.shape[0], -1)
