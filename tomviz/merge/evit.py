"""EViT-style attention pruning with fusion (Liang et al., "Not All Patches Are What You
Need", ICLR 2022), a pruning baseline beside the merging methods.

At each layer: the protected tokens and the ``N - P - r - 1`` unprotected tokens with
the highest CLS attention (mean over heads) stay, in input order; the other ``r + 1``
(the inattentive ones) are fused into one token — their size-weighted mean —
placed after the kept ones. Exactly ``r`` tokens go.

Padding is never fused with real tokens: inattentive padding is pruned, unless all
the inattentive tokens are padding, in which case they are fused (a padding token).
"""
from __future__ import annotations

import torch

from tomviz.merge.base import MergeInputs, MergeMethod
from tomviz.merge.plan import MergePlan
from tomviz.merge.selection import plan_from_assignment, protected_first, top_k_mask


def keep_and_fuse_plan(
    importance: torch.Tensor, r: int, num_protected: int = 1, valid: torch.Tensor | None = None
) -> MergePlan:
    """importance: ``[B, N]``; keeps the top ``N - r - 1`` (protected first) and fuses the rest.
    Returns a plan with ``N - r`` outputs, the fused token last."""
    num_tokens = importance.shape[1]
    keep = top_k_mask(protected_first(importance, num_protected, valid), num_tokens - r - 1)
    fused = ~keep
    if valid is not None:
        has_real = (fused & valid).any(1, keepdim=True)  # [B, 1]
        fused = fused & torch.where(has_real, valid, ~valid)
    return plan_from_assignment(keep, fused=fused)


class EViT(MergeMethod):
    """Keep the most attended tokens, fuse the rest into one."""

    name = "evit"
    label = "EViT (keep top-k by CLS attention, fuse the rest)"
    needs_cls_attention = True

    def plan_removal(self, inputs: MergeInputs, r: int) -> MergePlan:
        if inputs.cls_attention is None:
            raise ValueError("evit needs the CLS attention")
        with torch.no_grad():
            return keep_and_fuse_plan(inputs.cls_attention, r, inputs.num_protected, inputs.valid)
