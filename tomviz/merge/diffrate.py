"""DiffRate: prune and merge by CLS attention (Chen et al., "DiffRate: Differentiable
Compression Rate for Efficient Vision Transformers", ICCV 2023).

Reproduces the inference branch of ``DiffRateBlock.forward`` in ``DiffRate/patch/deit.py``
and ``get_merge_func`` in ``DiffRate/merge.py``, repository OpenGVLab/DiffRate at commit
91ae3e376e9c3f9f1e69f580fd902b61de5dfe0e. At every layer, after the attention residual
(x ``[B, N, C]``):

1. sort the tokens by CLS attention (mean over heads), CLS first, most attended next;
   the layer's output keeps this order;
2. prune: keep the first ``k_prune`` (the rest are dropped, group -1);
3. merge: each of the tokens ``k_merge .. k_prune - 1`` merges into the most similar
   (cosine of x) of the first ``k_merge``, CLS excluded. A merged token's value is the
   **plain mean** of x over it and the tokens that joined it, and its size is
   ``size_dst + Σ size_src · cos(src, dst)`` (the original's "proportional attention
   considering similarity"). As there, a source whose best cosine is negative lowers the size,
   and proportional attention takes its log; the trace's sizes count the members.

``k_prune``/``k_merge`` per layer come from ``schedule``: one of the schedules the authors
publish in ``compression_rate.json`` (shipped in ``data/diffrate_schedules.json``; e.g.
``"ViT-S-DeiT/2.9"``, the model and its GFLOPs target), or a pair of per-layer lists of
kept counts; it replaces the requested ``r`` or ratio. The counts are absolute, for the
authors' 224-px inputs (197 tokens; 257 for ViT-H/14), and as in the original, counts above
the tokens present keep all of them. Without
a schedule the tomviz schedule's ``r`` splits as ``n_prune = round(r * prune_fraction)``,
``n_merge = r - n_prune``.

Deliberate differences from the original:

* more than one protected token (DeiT's distillation token, DINOv2's registers): all stay
  first, in their order, and none is a merge target (the original knows CLS only);
* padding (text) ranks last, so it is pruned first; a padding token left in the merge band
  merges only into padding, and is pruned when no padding token is kept;
* ``torch.sort`` in the original is not stable: tokens with equal attention keep their
  input order here;
* without ``schedule``, the split of ``r`` by ``prune_fraction`` (the original learns
  both counts per layer);
* options: ``size_weighted=True`` merges as ToMe (size-weighted mean, sizes add: what
  tomviz did before); ``reorder=False`` keeps the input order of the tokens (and leaves
  the layers that remove nothing untouched), where the original sorts in every layer.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from tomviz.merge.base import MergeInputs, MergeMethod, max_removable
from tomviz.merge.plan import PRUNED, MergePlan
from tomviz.merge.selection import merge_edges, protected_first

PUBLISHED_SCHEDULES = Path(__file__).parent / "data" / "diffrate_schedules.json"


def published_schedules() -> dict[str, dict[str, dict[str, list[int]]]]:
    """The authors' schedules: ``{model: {gflops: {"prune_kept": [...], "merge_kept": [...]}}}``
    (per layer, tokens kept after pruning and after merging, CLS included)."""
    return json.loads(PUBLISHED_SCHEDULES.read_text())["schedules"]


def published_schedule(key: str) -> tuple[list[int], list[int]]:
    """``"ViT-S-DeiT/2.9"`` → ``(prune_kept, merge_kept)``, one count per layer."""
    table = published_schedules()
    model, _, flops = key.partition("/")
    if model not in table or flops not in table[model]:
        names = ", ".join(f"{m}/{f}" for m in table for f in table[m])
        raise ValueError(f"no published DiffRate schedule {key!r}: choose one of {names}")
    entry = table[model][flops]
    return list(entry["prune_kept"]), list(entry["merge_kept"])


def split_removal(r: int, prune_fraction: float) -> tuple[int, int]:
    """``r`` → ``(n_prune, n_merge)`` with ``n_prune = round(r * prune_fraction)``."""
    n_prune = int(round(r * prune_fraction))
    return n_prune, r - n_prune


def kept_counts(num_tokens: int, prune_kept: int, merge_kept: int) -> tuple[int, int]:
    """Tokens left after pruning and after merging when ``num_tokens`` enter a layer whose
    schedule says ``prune_kept``/``merge_kept`` (the original slices, so larger counts keep all)."""
    after_prune = min(num_tokens, prune_kept)
    return after_prune, min(after_prune, merge_kept)


def prune_and_merge_plan(
    importance: torch.Tensor,
    features: torch.Tensor,
    n_prune: int,
    n_merge: int,
    num_protected: int = 1,
    valid: torch.Tensor | None = None,
    size_weighted: bool = False,
    reorder: bool = True,
) -> MergePlan:
    """Sort by importance, prune the tail, merge the next band into its most similar kept token.

    importance: ``[B, N]`` (higher = kept first); features: ``[B, N, C]`` for the cosine;
    valid: ``[B, N]`` bool or None. Returns a plan with ``K = N - n_prune - n_merge``
    outputs: the kept tokens in importance order (protected ones first; in input order with
    ``reorder=False``). With
    ``size_weighted=False`` the plan carries DiffRate's merge rule (plain mean of x, sizes
    ``size_dst + Σ size_src · cos``); with True, ToMe's.
    """
    batch, num_tokens = importance.shape
    device = importance.device
    num_kept = num_tokens - n_prune - n_merge
    ranked = protected_first(importance, num_protected, valid)
    order = ranked.argsort(dim=1, descending=True, stable=True)  # [B, N] input index of each rank
    kept_idx = order[:, :num_kept]  # [B, K]: output k is input kept_idx[:, k]
    if not reorder:
        kept_idx = kept_idx.sort(dim=1).values
    band_idx = order[:, num_kept : num_kept + n_merge]  # [B, M]
    dst = torch.full((batch, num_tokens), PRUNED, dtype=torch.long, device=device)
    dst.scatter_(1, kept_idx, torch.arange(num_kept, device=device).expand(batch, num_kept))
    factors = torch.ones(batch, num_tokens, 1, device=device)
    merged = torch.zeros(batch, num_tokens, dtype=torch.bool, device=device)
    target = torch.zeros(batch, num_tokens, dtype=torch.long, device=device)
    score = torch.zeros(batch, num_tokens, device=device)
    if n_merge > 0:
        unit = F.normalize(features.float(), dim=-1)
        band = unit.gather(1, band_idx.unsqueeze(-1).expand(-1, -1, unit.shape[-1]))  # [B, M, C]
        kept = unit.gather(1, kept_idx.unsqueeze(-1).expand(-1, -1, unit.shape[-1]))  # [B, K, C]
        sim = band @ kept.transpose(1, 2)  # [B, M, K]
        sim = sim.masked_fill((kept_idx < num_protected).unsqueeze(1), -torch.inf)  # nothing merges into CLS
        if valid is not None:
            same_kind = valid.gather(1, band_idx).unsqueeze(2) == valid.gather(1, kept_idx).unsqueeze(1)
            sim = sim.masked_fill(~same_kind, -torch.inf)
        best, best_k = sim.max(-1)  # [B, M]
        has_partner = torch.isfinite(best)  # no partner: pruned
        dst.scatter_(1, band_idx, torch.where(has_partner, best_k, PRUNED))
        merged.scatter_(1, band_idx, has_partner)
        target.scatter_(1, band_idx, kept_idx.gather(1, best_k))
        score.scatter_(1, band_idx, best.nan_to_num(neginf=0.0))
        factors.scatter_(1, band_idx.unsqueeze(-1), score.gather(1, band_idx).unsqueeze(-1))
    edges = merge_edges(merged, target, score)
    if size_weighted:
        return MergePlan(dst=dst, num_out=num_kept, edges=edges, keep=kept_idx)
    weights = torch.ones(batch, num_tokens, 1, device=device)
    return MergePlan(dst=dst, num_out=num_kept, edges=edges, mean_weights=weights, size_factors=factors)


class DiffRate(MergeMethod):
    """Sort by CLS attention, prune the tail, merge the next band (see the module docstring)."""

    name = "diffrate"
    label = "DiffRate (prune + merge by CLS attention)"
    needs_cls_attention = True
    needs_hidden = True
    plans_every_layer = True  # the original sorts the tokens in every layer

    def __init__(
        self,
        prune_fraction: float = 0.5,
        schedule: str | tuple[list[int], list[int]] | None = None,
        size_weighted: bool = False,
        reorder: bool = True,
    ):
        """prune_fraction: without ``schedule``, the share of each layer's ``r`` that is pruned.
        schedule: ``"MODEL/GFLOPS"`` from :func:`published_schedules`, or ``(prune_kept, merge_kept)``
        lists (tokens kept per layer, CLS included); it replaces the requested r or ratio.
        size_weighted: merge as ToMe instead of the original's plain mean and cosine-scaled sizes.
        reorder: sort the tokens by CLS attention in every layer, as the original (False: input order)."""
        if not 0.0 <= prune_fraction <= 1.0:
            raise ValueError(f"prune_fraction must be in [0, 1], got {prune_fraction}")
        self.prune_fraction = float(prune_fraction)
        self.schedule_name = schedule if isinstance(schedule, str) else None
        self.kept: tuple[list[int], list[int]] | None = None
        if isinstance(schedule, str):
            self.kept = published_schedule(schedule)
        elif schedule is not None:
            prune_kept, merge_kept = (list(map(int, counts)) for counts in schedule)
            if len(prune_kept) != len(merge_kept) or min(prune_kept + merge_kept) < 1:
                raise ValueError("schedule: two lists of the same length with counts >= 1")
            self.kept = (prune_kept, merge_kept)
        self.size_weighted = bool(size_weighted)
        self.reorder = bool(reorder)
        self.plans_every_layer = self.reorder

    def schedule_for(self, requested: list[int], num_tokens: int, num_protected: int, num_layers: int) -> list[int]:
        if self.kept is None:
            return requested
        prune_kept, merge_kept = self.kept
        if len(prune_kept) != num_layers:
            raise ValueError(f"the DiffRate schedule has {len(prune_kept)} layers but the model has {num_layers}")
        removed, n = [], num_tokens
        for layer in range(num_layers):
            _, after = kept_counts(n, prune_kept[layer], merge_kept[layer])
            if after < num_protected:
                raise ValueError(f"layer {layer}: the schedule keeps {after} tokens, fewer than the {num_protected} protected ones")
            removed.append(n - after)
            n = after
        return removed

    def plan(self, inputs: MergeInputs, r: int) -> MergePlan:
        if inputs.cls_attention is None or inputs.hidden is None:
            raise ValueError("diffrate needs the CLS attention and the hidden states")
        batch, num_tokens, _ = inputs.metric.shape
        if self.kept is not None:
            after_prune, after_merge = kept_counts(num_tokens, self.kept[0][inputs.layer], self.kept[1][inputs.layer])
            n_prune, n_merge = num_tokens - after_prune, after_prune - after_merge
        else:
            r = min(r, max_removable(num_tokens, inputs.num_protected))
            n_prune, n_merge = split_removal(r, self.prune_fraction)
        if n_prune + n_merge == 0 and not self.reorder:
            return MergePlan.identity(batch, num_tokens, inputs.metric.device)
        with torch.no_grad():
            return prune_and_merge_plan(
                inputs.cls_attention, inputs.hidden, n_prune, n_merge, inputs.num_protected, inputs.valid,
                size_weighted=self.size_weighted, reorder=self.reorder,
            )

    def __repr__(self) -> str:
        schedule = self.schedule_name or ("custom" if self.kept is not None else None)
        return (
            f"DiffRate(prune_fraction={self.prune_fraction}, schedule={schedule!r}, "
            f"size_weighted={self.size_weighted}, reorder={self.reorder})"
        )
