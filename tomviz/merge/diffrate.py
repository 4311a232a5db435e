"""DiffRate-style prune + merge (Chen et al., "DiffRate: Differentiable Compression Rate
for Efficient Vision Transformers", ICCV 2023). Written from REFERENCES §2.

At each layer, after the attention:

1. rank the tokens by CLS attention (mean over heads), protected tokens first;
2. prune: the last ``n_prune`` tokens of the ranking are dropped (group -1);
3. merge: of the remaining ones, the last ``n_merge`` each merge into the most
   similar (cosine of the hidden states) of the tokens ranked above them, which stay.

The schedule's ``r`` is split as ``n_prune = round(r * prune_fraction)`` and
``n_merge = r - n_prune`` (DiffRate learns both per layer; here they come from the
schedule). Exactly ``r`` tokens go. Outputs keep the input order. Padding ranks last
(it is pruned first); a padding token left in the merge band merges only into
padding, and is pruned when no padding token stays.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tomviz.merge.base import MergeInputs, MergeMethod, max_removable
from tomviz.merge.plan import MergePlan
from tomviz.merge.selection import plan_from_assignment, protected_first


def split_removal(r: int, prune_fraction: float) -> tuple[int, int]:
    """``r`` → ``(n_prune, n_merge)`` with ``n_prune = round(r * prune_fraction)``."""
    n_prune = int(round(r * prune_fraction))
    return n_prune, r - n_prune


def prune_and_merge_plan(
    importance: torch.Tensor,
    features: torch.Tensor,
    n_prune: int,
    n_merge: int,
    num_protected: int = 1,
    valid: torch.Tensor | None = None,
) -> MergePlan:
    """Rank, prune the tail, merge the next band into the most similar kept token.

    importance: ``[B, N]`` (higher = kept first); features: ``[B, N, C]`` for the cosine;
    valid: ``[B, N]`` bool or None. Returns a plan with ``N - n_prune - n_merge`` outputs.
    """
    batch, num_tokens = importance.shape
    num_kept = num_tokens - n_prune - n_merge
    ranked = protected_first(importance, num_protected, valid)
    order = ranked.argsort(dim=1, descending=True, stable=True)  # [B, N]
    kept_idx = order[:, :num_kept]  # [B, K]
    band_idx = order[:, num_kept : num_kept + n_merge]  # [B, M] merge into the kept ones
    keep = torch.zeros(batch, num_tokens, dtype=torch.bool, device=importance.device).scatter_(1, kept_idx, True)
    target = torch.full((batch, num_tokens), -1, dtype=torch.long, device=importance.device)
    score = torch.zeros(batch, num_tokens, device=importance.device)
    if n_merge > 0:
        unit = F.normalize(features.float(), dim=-1)
        band = unit.gather(1, band_idx.unsqueeze(-1).expand(-1, -1, unit.shape[-1]))  # [B, M, C]
        kept = unit.gather(1, kept_idx.unsqueeze(-1).expand(-1, -1, unit.shape[-1]))  # [B, K, C]
        sim = band @ kept.transpose(1, 2)  # [B, M, K]
        kept_protected = kept_idx < num_protected
        sim = sim.masked_fill(kept_protected.unsqueeze(1), -torch.inf)  # nothing merges into CLS
        if valid is not None:
            same_kind = valid.gather(1, band_idx).unsqueeze(2) == valid.gather(1, kept_idx).unsqueeze(1)
            sim = sim.masked_fill(~same_kind, -torch.inf)
        best, best_k = sim.max(-1)  # [B, M]
        best_dst = torch.where(torch.isinf(best), -1, kept_idx.gather(1, best_k))  # no partner: pruned
        target.scatter_(1, band_idx, best_dst)
        score.scatter_(1, band_idx, best.nan_to_num(neginf=0.0))
    return plan_from_assignment(keep, target, score=score)


class DiffRate(MergeMethod):
    """Prune the least attended tokens, merge the next least attended ones."""

    name = "diffrate"
    label = "DiffRate (prune + merge by CLS attention)"
    needs_cls_attention = True
    needs_hidden = True

    def __init__(self, prune_fraction: float = 0.5):
        if not 0.0 <= prune_fraction <= 1.0:
            raise ValueError(f"prune_fraction must be in [0, 1], got {prune_fraction}")
        self.prune_fraction = float(prune_fraction)

    def plan(self, inputs: MergeInputs, r: int) -> MergePlan:
        if inputs.cls_attention is None or inputs.hidden is None:
            raise ValueError("diffrate needs the CLS attention and the hidden states")
        batch, num_tokens, _ = inputs.metric.shape
        r = min(r, max_removable(num_tokens, inputs.num_protected))
        if r <= 0:
            return MergePlan.identity(batch, num_tokens, inputs.metric.device)
        n_prune, n_merge = split_removal(r, self.prune_fraction)
        with torch.no_grad():
            return prune_and_merge_plan(
                inputs.cls_attention, inputs.hidden, n_prune, n_merge, inputs.num_protected, inputs.valid
            )

    def __repr__(self) -> str:
        return f"DiffRate(prune_fraction={self.prune_fraction})"
