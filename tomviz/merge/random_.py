"""Two random baselines, two algorithms under two names.

``random`` (:class:`RandomBipartite`), random *merging*: ToMe (Bolya et al., ICLR 2023) with a seeded random
A/B split. Every layer draws which unprotected tokens form the A side (half of them,
rounded up) from a generator seeded with ``seed + layer``, so a call is reproducible and
the split differs between layers. Matching, merging and the output order are ToMe's (:func:`tomviz.merge.tome.bipartite_plan`).

``random_prune`` (:class:`RandomPrune`), random *pruning*: a seeded random subset of the unprotected
tokens stays, the rest are dropped. The scores are drawn from a generator seeded with
``seed + layer`` (``seed``: the call's ``extra["seed"]`` when given, as a VLM request's ``seed`` is at the
boundary, else the method's own).
"""
from __future__ import annotations

import torch

from tomviz.merge.base import MergeInputs, MergeMethod
from tomviz.merge.plan import MergePlan
from tomviz.merge.selection import plan_from_assignment, top_k_mask
from tomviz.merge.tome import bipartite_plan


def random_split(num_tokens: int, num_protected: int, seed: int) -> torch.Tensor:
    """``[N]`` bool A side: protected tokens plus a random ``ceil((N - P) / 2)`` of the others."""
    generator = torch.Generator().manual_seed(seed)
    free = num_tokens - num_protected
    chosen = torch.randperm(free, generator=generator)[: (free + 1) // 2] + num_protected
    is_a = torch.zeros(num_tokens, dtype=torch.bool)
    is_a[:num_protected] = True  # protected rows never merge, whichever side they sit on
    is_a[chosen] = True
    return is_a


class RandomBipartite(MergeMethod):
    """ToMe's matching on a random (seeded) A/B split."""

    name = "random"
    label = "Random bipartite (baseline)"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def plan_removal(self, inputs: MergeInputs, r: int) -> MergePlan:
        num_tokens = inputs.metric.shape[1]
        is_a = random_split(num_tokens, inputs.num_protected, self.seed + inputs.layer).to(inputs.metric.device)
        return bipartite_plan(inputs.metric, r, inputs.num_protected, inputs.valid, is_a=is_a)

    def __repr__(self) -> str:
        return f"RandomBipartite(seed={self.seed})"


class RandomPrune(MergeMethod):
    """Keep a seeded random subset of the unprotected tokens; drop the rest (nothing merges)."""

    name = "random_prune"
    label = "Random pruning (a random subset stays, baseline)"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def removable(self, inputs: MergeInputs) -> int:
        """A selection, not a bipartite step: every unprotected token may go."""
        return inputs.metric.shape[1] - inputs.num_protected

    def plan_removal(self, inputs: MergeInputs, r: int) -> MergePlan:
        batch, num_tokens = inputs.metric.shape[:2]
        generator = torch.Generator().manual_seed(inputs.extra.get("seed", self.seed) + inputs.layer)
        scores = torch.rand(batch, num_tokens, generator=generator).to(inputs.metric.device)  # [B, N]
        scores[:, : inputs.num_protected] = torch.inf  # protected tokens always stay
        if inputs.valid is not None:
            scores = scores.masked_fill(~inputs.valid, -1.0)  # padding goes first
        return plan_from_assignment(top_k_mask(scores, num_tokens - r))

    def __repr__(self) -> str:
        return f"RandomPrune(seed={self.seed})"
