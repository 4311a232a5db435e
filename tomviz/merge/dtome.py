"""DToMe, the dynamic token merging of DyMU (Wang et al., "DyMU: Dynamic Merging and
Virtual Unmerging for Efficient VLMs", 2025).

Reproduces the inference path of DyMU's ``ToMEBlock.merge_tokens`` with a threshold:
``bipartite_soft_matching(specified_threshold=τ)`` at batch 1 and
``batch_level_bipartite_soft_matching(specified_threshold=τ)`` with
``batch_level_merge_wavg`` in a batch, in ``src/open_clip/tome.py`` of
https://github.com/MikeWangWZHL/dymu, commit ``c57d75a1a5ef82ee3ed18181253fbb5ca3558951``.
Written from the code's definition.

At each layer (batch B, tokens N, ``P`` protected tokens):

1. ToMe's proposals: A = even positions, B = odd positions; every unprotected, real A
   token proposes its most similar real B token (cosine of the keys). Protected tokens
   and padding take no part (DyMU: score ``-inf``);
2. every proposal whose similarity exceeds the layer's threshold ``τ_l`` merges
   (size-weighted mean), so each image removes its own number of tokens: a simple image
   loses more than a busy one. A layer removes at most ``(N - P) // 2`` tokens, and with
   ``max_r_ratio`` at most ``int(max_r_ratio · r)`` (DyMU's ``max_r_per_instance_ratio``);
3. the new order is DyMU's: protected tokens, kept real A tokens in position order, the B
   tokens in position order, then padding; an image that merges nothing keeps its order.
   The next layer's A/B split depends on it.

In a batch, the rows have different lengths. The plan pads the rows of the images that
removed more with empty slots at the end (:attr:`MergePlan.ragged`), and the engine
marks them invalid, so attention masks them as it masks text padding. A layer's
output length is that of the image that removed the fewest; ``trace.meta["schedule"]``
records that count.

Thresholds, first match wins:

* ``thresholds=[τ_0, ..., τ_{L-1}]``: one per layer;
* ``threshold=τ``: the same for every layer;
* otherwise the calibration shipped in ``tomviz/merge/data/dtome_thresholds.json``
  (made by :mod:`tomviz.tools.calibrate_dtome` for ``dinov2-small`` on the example photos with
  tomviz's rule; DyMU's own rule is :func:`tomviz.tools.calibrate_dtome.calibrate_thresholds_dymu`):
  per layer, the threshold under which the photos merged on average the schedule's
  ``r`` at that layer, interpolated between the calibrated constant schedules.

With explicit thresholds the schedule only says *where* merging happens (layers with
``r > 0``).

Deliberate differences from DyMU's code:

* merged values are exact size-weighted means; DyMU's batch path divides by
  ``size + 1e-4`` (a relative error of about ``1e-4 / size``);
* a batch keeps empty slots up to the longest row; DyMU truncates every row to the
  longest real row and moves padding to the end (the real tokens sit at the same
  positions in both, so the decisions are the same);
* in a batch, each image is merged as DyMU's batch-1 path (``bipartite_soft_matching``)
  merges it alone. DyMU's batch path reorders an image that merged nothing at a layer
  (A tokens first), and moves padding to the end with a non-stable ``argsort``, which can
  scramble the real tokens' order (and so the next layer's A/B split) depending on
  torch's sort; with a stable sort it gives the same tokens in the same order as here;
* ``num_protected`` leading tokens are protected (DyMU: CLS and an optional distillation
  token);
* DyMU's batch path does not cap a row at ``(N - P) // 2``; tomviz does (they differ
  only with two protected tokens and an odd N).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tomviz.merge.base import MergeInputs, MergeMethod, max_removable
from tomviz.merge.plan import MergeEdges, MergePlan
from tomviz.merge.tome import Proposals, alternating_proposals, plan_from_proposals

DEFAULT_CALIBRATION = Path(__file__).parent / "data" / "dtome_thresholds.json"


@lru_cache(maxsize=8)
def load_calibration(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(r_grid [G], thresholds [G, L])`` from a calibration JSON (see :mod:`tomviz.tools.calibrate_dtome`)."""
    data = json.loads(Path(path).read_text())
    return np.asarray(data["r"], dtype=np.float64), np.asarray(data["thresholds"], dtype=np.float64)


def dymu_proposals(metric: torch.Tensor, num_protected: int = 1, valid: torch.Tensor | None = None) -> Proposals:
    """ToMe's proposals with DyMU's masking: protected tokens and padding score ``-inf``
    (never merge, never receive). metric: ``[B, N, C]``; valid: ``[B, N]`` bool or None."""
    if valid is None:
        return alternating_proposals(metric, num_protected, None)
    protected_a, protected_b = (num_protected + 1) // 2, num_protected // 2
    unit = metric / torch.linalg.vector_norm(metric, dim=-1, keepdim=True)
    scores = unit[:, ::2] @ unit[:, 1::2].transpose(1, 2)  # [B, Na, Nb]
    scores[:, :protected_a] = -torch.inf
    scores[:, :, :protected_b] = -torch.inf
    pad = (~valid[:, ::2]).unsqueeze(2) | (~valid[:, 1::2]).unsqueeze(1)  # [B, Na, Nb]
    scores = scores.masked_fill(pad, -torch.inf)
    best_score, best_b = scores.max(dim=-1)  # [B, Na]
    order = best_score.argsort(dim=-1, descending=True)  # [B, Na]
    return Proposals(best_score, best_b, order, metric.shape[1], num_protected)


def proposal_scores(metric: torch.Tensor, num_protected: int = 1, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The similarity of every A token's best B proposal, highest first: ``[B, N, C]`` → ``[B, R_max]``
    (``-inf`` for proposals that cannot merge: padding)."""
    r_max = max_removable(metric.shape[1], num_protected)
    if r_max <= 0:
        return metric.new_zeros(metric.shape[0], 0)
    with torch.no_grad():
        return dymu_proposals(metric, num_protected, valid).top_scores(r_max)


def plan_from_merging(proposals: Proposals, merging: torch.Tensor, valid: torch.Tensor | None = None) -> MergePlan:
    """The plan that merges the proposals flagged in ``merging`` ``[B, Na]`` bool (each row may
    flag a different number) into their best B, in DyMU's order: protected, kept real A, real B,
    padding, then the empty slots of the rows that merged more than the fewest (ragged)."""
    best_score, best_b = proposals.best_score, proposals.best_b
    num_tokens, num_protected = proposals.num_tokens, proposals.num_protected
    batch, num_a = best_score.shape
    device = best_score.device
    counts = merging.sum(1)  # [B]
    fewest, most = int(counts.min()), int(counts.max())
    if most == 0:
        return MergePlan.identity(batch, num_tokens, device)
    if fewest == most and valid is None:  # ToMe's order and its fast path
        return plan_from_proposals(proposals, most)
    positions = torch.arange(num_tokens, device=device)
    merged = torch.zeros(batch, num_tokens, dtype=torch.bool, device=device)
    merged[:, ::2] = merging
    real = torch.ones_like(merged) if valid is None else valid
    kind = torch.where(positions % 2 == 0, 1, 2).expand(batch, -1)  # 1: A, 2: B
    kind = torch.where(real, kind, 3)  # 3: padding
    kind = torch.where(positions < num_protected, 0, kind)
    kind = torch.where(merged, 4, kind)  # merged tokens sort last and take no slot
    kind = torch.where((counts == 0).unsqueeze(1), 0, kind)  # a row that merges nothing keeps its order
    order = (kind * num_tokens + positions).argsort(dim=1)  # [B, N] input token of each slot
    slot = torch.empty_like(order).scatter_(1, order, positions.expand(batch, -1))  # [B, N] slot of each token
    target = 2 * best_b + 1  # [B, Na] input position of each A's best B
    dst = slot.clone()
    dst[:, ::2] = torch.where(merging, slot.gather(1, target), slot[:, ::2])
    num_out = num_tokens - fewest
    # edges: the merged A tokens by score, highest first; rows that merged fewer padded with -1
    by_score = torch.where(merging, best_score, -torch.inf).argsort(dim=1, descending=True)[:, :most]  # [B, most]
    present = merging.gather(1, by_score)
    src = torch.where(present, 2 * by_score, -1)
    edge_dst = torch.where(present, target.gather(1, by_score), -1)
    score = torch.where(present, best_score.gather(1, by_score), 0.0)
    edges = MergeEdges(src=src, dst=edge_dst, score=score)
    if fewest == most:
        return MergePlan(dst=dst, num_out=num_out, edges=edges, keep=order[:, :num_out])
    return MergePlan(dst=dst, num_out=num_out, edges=edges, ragged=True)


def threshold_merging(proposals: Proposals, threshold: float, limit: int) -> torch.Tensor:
    """``[B, Na]`` bool: the proposals above ``threshold``, at most ``limit`` per row (the best)."""
    passing = proposals.best_score > threshold
    if limit < proposals.best_score.shape[1]:
        rank = torch.empty_like(proposals.order).scatter_(
            1, proposals.order, torch.arange(proposals.order.shape[1], device=passing.device).expand_as(proposals.order)
        )
        passing = passing & (rank < limit)
    return passing


class DToMe(MergeMethod):
    """Bipartite matching that merges every proposal above a per-layer threshold, each image its own count."""

    name = "dtome"
    label = "DToMe / DyMU (threshold merging, adaptive count)"

    def __init__(
        self,
        threshold: float | None = None,
        thresholds: list[float] | None = None,
        calibration: str | Path | None = DEFAULT_CALIBRATION,
        max_r_ratio: float | None = None,
    ):
        self.threshold = None if threshold is None else float(threshold)
        self.thresholds = None if thresholds is None else [float(t) for t in thresholds]
        self.calibration = None if calibration is None else str(calibration)
        self.max_r_ratio = None if max_r_ratio is None else float(max_r_ratio)  # cap per image: int(ratio * r)
        if self.threshold is None and self.thresholds is None and self.calibration is None:
            raise ValueError("dtome needs a threshold, a list of thresholds or a calibration file")

    def layer_threshold(self, layer: int, r: int) -> float:
        """τ for ``layer`` (0-based) when the schedule asks ``r`` there."""
        if self.thresholds is not None:
            if layer >= len(self.thresholds):
                raise ValueError(f"dtome has {len(self.thresholds)} thresholds but layer {layer} merges")
            return self.thresholds[layer]
        if self.threshold is not None:
            return self.threshold
        r_grid, table = load_calibration(self.calibration)
        if layer >= table.shape[1]:
            raise ValueError(
                f"dtome's calibration table ({Path(self.calibration).name}) covers {table.shape[1]} layers, but layer "
                f"{layer} merges: calibrate this model (tomviz.tools.calibrate_dtome) and pass thresholds=[...], "
                "or give one threshold="
            )
        column = table[:, layer]  # [G]
        return float(np.interp(r, r_grid, column))

    def plan(self, inputs: MergeInputs, r: int) -> MergePlan:
        """Match once, then merge, in each image, the proposals that pass this layer's threshold."""
        return self._threshold_plan(inputs, r, max_removable(inputs.metric.shape[1], inputs.num_protected))

    def plan_at_most(self, inputs: MergeInputs, r: int) -> MergePlan:
        """The same rule, merging at most ``r`` proposals (repeated steps toward a floor of tokens)."""
        return self._threshold_plan(inputs, r, min(r, max_removable(inputs.metric.shape[1], inputs.num_protected)))

    def _threshold_plan(self, inputs: MergeInputs, r: int, limit: int) -> MergePlan:
        batch, num_tokens, _ = inputs.metric.shape
        if self.max_r_ratio is not None:
            limit = min(limit, int(self.max_r_ratio * r))
        if limit <= 0:
            return MergePlan.identity(batch, num_tokens, inputs.metric.device)
        with torch.no_grad():
            proposals = dymu_proposals(inputs.metric, inputs.num_protected, inputs.valid)
            merging = threshold_merging(proposals, self.layer_threshold(inputs.layer, r), limit)
            return plan_from_merging(proposals, merging, inputs.valid)

    def __repr__(self) -> str:
        if self.thresholds is not None:
            return f"DToMe(thresholds={self.thresholds})"
        if self.threshold is not None:
            return f"DToMe(threshold={self.threshold})"
        return f"DToMe(calibration={Path(self.calibration).name!r})"
