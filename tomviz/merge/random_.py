"""Random bipartite matching: ToMe (Bolya et al., ICLR 2023) with a seeded random A/B split, a baseline.

Every layer draws which unprotected tokens form the A side (half of them,
rounded up) from a generator seeded with ``seed + layer``, so a call is
reproducible and the split differs between layers. Matching, merging and the
output order are ToMe's (:func:`tomviz.merge.tome.bipartite_plan`).
"""
from __future__ import annotations

import torch

from tomviz.merge.base import MergeInputs, MergeMethod
from tomviz.merge.plan import MergePlan
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
