"""DToMe, the dynamic token merging of DyMU (Wang et al., "DyMU: Dynamic Merging and
Virtual Unmerging for Efficient VLMs", 2025). Written from REFERENCES §2.

ToMe's bipartite matching (:func:`tomviz.merge.tome.alternating_proposals`), but instead of
the ``r`` best proposals, every proposal whose similarity exceeds the layer's
threshold ``τ_l`` merges. The number of merged tokens therefore adapts to the input:
a simple image loses more tokens than a busy one, and a layer may remove fewer or
more tokens than the schedule's ``r`` (never more than half of its unprotected
tokens, the bipartite limit). A trace of ``dtome`` does not follow the schedule.

Thresholds, first match wins:

* ``thresholds=[τ_0, ..., τ_{L-1}]``: one per layer;
* ``threshold=τ``: the same for every layer;
* otherwise the calibration shipped in ``tomviz/merge/data/dtome_thresholds.json``
  (made by :mod:`tomviz.merge.calibrate` for ``dinov2-small`` on the example photos):
  per layer, the threshold under which the photos merged on average the schedule's
  ``r`` at that layer, interpolated between the calibrated constant schedules. The
  calibration was made under constant schedules; other schedules, and other models,
  get an approximation (calibrate your own with
  :func:`tomviz.merge.calibrate.calibrate_thresholds`).

With explicit thresholds the schedule only says *where* merging happens (layers with
``r > 0``). In a batch, every element removes the smallest count any element
reached (a plan has one output length), so no pair below its threshold merges.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tomviz.merge.base import MergeInputs, MergeMethod, max_removable
from tomviz.merge.plan import MergePlan
from tomviz.merge.tome import alternating_proposals, plan_from_proposals

DEFAULT_CALIBRATION = Path(__file__).parent / "data" / "dtome_thresholds.json"


@lru_cache(maxsize=8)
def load_calibration(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(r_grid [G], thresholds [G, L])`` from a calibration JSON (see :mod:`tomviz.merge.calibrate`)."""
    data = json.loads(Path(path).read_text())
    return np.asarray(data["r"], dtype=np.float64), np.asarray(data["thresholds"], dtype=np.float64)


def proposal_scores(metric: torch.Tensor, num_protected: int = 1, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The similarity of every A token's best B proposal, highest first: ``[B, N, C]`` → ``[B, R_max]``.

    Padding pairs score the dtype's maximum (they always merge), real–padding pairs never appear.
    """
    r_max = max_removable(metric.shape[1], num_protected)
    if r_max <= 0:
        return metric.new_zeros(metric.shape[0], 0)
    with torch.no_grad():
        return alternating_proposals(metric, num_protected, valid).top_scores(r_max)


class DToMe(MergeMethod):
    """Bipartite matching that merges every proposal above a per-layer threshold."""

    name = "dtome"
    label = "DToMe / DyMU (threshold merging, adaptive count)"

    def __init__(
        self,
        threshold: float | None = None,
        thresholds: list[float] | None = None,
        calibration: str | Path | None = DEFAULT_CALIBRATION,
    ):
        self.threshold = None if threshold is None else float(threshold)
        self.thresholds = None if thresholds is None else [float(t) for t in thresholds]
        self.calibration = None if calibration is None else str(calibration)
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
        column = table[:, min(layer, table.shape[1] - 1)]  # [G]
        return float(np.interp(r, r_grid, column))

    def plan(self, inputs: MergeInputs, r: int) -> MergePlan:
        """Match once, then merge the proposals that pass this layer's threshold (smallest count over the batch)."""
        batch, num_tokens, _ = inputs.metric.shape
        r_max = max_removable(num_tokens, inputs.num_protected)
        if r_max <= 0:
            return MergePlan.identity(batch, num_tokens, inputs.metric.device)
        with torch.no_grad():
            proposals = alternating_proposals(inputs.metric, inputs.num_protected, inputs.valid)
            passed = (proposals.top_scores(r_max) > self.layer_threshold(inputs.layer, r)).sum(1)  # [B]
            count = int(passed.min())
            if count == 0:
                return MergePlan.identity(batch, num_tokens, inputs.metric.device)
            return plan_from_proposals(proposals, count)

    def __repr__(self) -> str:
        if self.thresholds is not None:
            return f"DToMe(thresholds={self.thresholds})"
        if self.threshold is not None:
            return f"DToMe(threshold={self.threshold})"
        return f"DToMe(calibration={Path(self.calibration).name!r})"
