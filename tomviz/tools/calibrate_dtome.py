"""Calibrate DToMe thresholds (DyMU): per layer, the similarity above which a set of
inputs merges, on average, the wanted number of tokens.

Layers are calibrated in order: with the thresholds of layers ``0..l-1`` fixed, every
input runs to layer ``l``, where the similarity of each of its bipartite proposals is
recorded; ``τ_l`` is the value that the ``r_l · M`` highest of the ``M`` inputs' pooled
proposals exceed, so the average count over the inputs is ``r_l``.

Each layer's thresholds are then made non-increasing in r (a running minimum over the
r grid; the raw values can rise by a few thousandths when earlier layers merged more),
so asking for more merging never raises a threshold.

Run ``python -m tomviz.tools.calibrate_dtome`` to rebuild the shipped table
(``dinov2-small``, the photos in ``assets/``, constant schedules ``r = 2, 4, ..., 18``).

DyMU's own rule is :func:`calibrate_thresholds_dymu` (``ToMEBlock`` with
``update_threshold=True`` and ``threshold_running_avg`` in ``src/open_clip/tome.py`` of
https://github.com/MikeWangWZHL/dymu, commit ``c57d75a1a5ef82ee3ed18181253fbb5ca3558951``):
the inputs run in batches of ``B`` through all layers at once; at each layer the ``r·B``
best proposals of the whole batch merge (batch-level ToMe, so each image merges its own
count) and the ``(r·B+1)``-th best score, clamped at 0, is that batch's threshold for the
layer; ``τ_l`` is the running mean of those over the batches.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from tomviz.merge.base import MergeInputs, MergeMethod
from tomviz.merge.dtome import DEFAULT_CALIBRATION, DToMe, dymu_proposals, plan_from_merging, proposal_scores
from tomviz.merge.plan import MergePlan
from tomviz.merge.request import MergeRequest
from tomviz.models.hub import DEFAULT_MODEL
from tomviz.models.loading import LoadedModel, PreparedInput, load

EXAMPLE_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "hubble_deep_field.jpg", "grace_hopper.jpg")
ASSETS = Path(__file__).resolve().parents[2] / "assets"
CALIBRATED_R = tuple(range(2, 20, 2))


class _RecordingDToMe(DToMe):
    """DToMe with the calibrated thresholds before ``record_layer``; at that layer it records the
    proposal scores (``[R_max]`` of batch element 0) and merges nothing; after it, nothing."""

    def __init__(self, thresholds: list[float], record_layer: int):
        super().__init__(thresholds=thresholds)
        self.record_layer = record_layer
        self.recorded: torch.Tensor | None = None

    def plan(self, inputs: MergeInputs, r: int) -> MergePlan:
        if inputs.layer == self.record_layer:
            self.recorded = proposal_scores(inputs.metric, inputs.num_protected, inputs.valid)[0].float().cpu()
        if inputs.layer >= self.record_layer:
            return MergePlan.identity(inputs.metric.shape[0], inputs.metric.shape[1], inputs.metric.device)
        return super().plan(inputs, r)


def calibrate_thresholds(model: str | LoadedModel, images: Sequence[Any], r_per_layer: Sequence[int]) -> list[float]:
    """Per-layer thresholds under which ``images`` merge on average ``r_per_layer[l]`` tokens at layer ``l``.

    model: a loaded model or a name for :func:`tomviz.load`; images: anything its
    ``prepare`` accepts (PIL images, paths, strings for text models); r_per_layer: ``[L]``.
    Returns ``[L]`` floats (``inf`` where ``r`` is 0: nothing merges there).
    """
    loaded = load(model) if not isinstance(model, LoadedModel) else model
    num_layers = loaded.num_layers
    if len(r_per_layer) != num_layers:
        raise ValueError(f"r_per_layer has {len(r_per_layer)} entries, the model has {num_layers} layers")
    prepared = [loaded.prepare(image) for image in images]
    thresholds: list[float] = []
    for layer, target in enumerate(r_per_layer):
        if target <= 0:
            thresholds.append(math.inf)
            continue
        pooled = []
        for inputs in prepared:
            recorder = _RecordingDToMe(thresholds + [math.inf] * (num_layers - layer), record_layer=layer)
            loaded.run(inputs, MergeRequest(method=recorder, r=[1] * num_layers).config())
            pooled.append(recorder.recorded)
        scores = torch.cat(pooled).sort(descending=True).values
        wanted = min(int(target) * len(prepared), scores.numel())
        # midway between the last score that must pass and the first that must not
        below = scores[wanted] if wanted < scores.numel() else scores[-1] - 1e-3
        thresholds.append(float((scores[wanted - 1] + below) / 2))
    return thresholds


class DyMUCalibration(MergeMethod):
    """DyMU's threshold-finding forward: at each layer the ``r·B`` best proposals of the whole
    batch merge (each image its own count), and the ``(r·B+1)``-th best proposal score,
    clamped at 0, is recorded in :attr:`recorded` (layer → one value per batch)."""

    name = "dymu_calibration"
    label = "DyMU threshold calibration (batch-level ToMe)"
    modalities = ("image",)

    def __init__(self) -> None:
        self.recorded: dict[int, list[float]] = {}

    def plan_removal(self, inputs: MergeInputs, r: int) -> MergePlan:
        metric = inputs.metric
        batch = metric.shape[0]
        with torch.no_grad():
            proposals = dymu_proposals(metric, inputs.num_protected, inputs.valid)
            flat = proposals.best_score.reshape(-1)  # [B*Na], the batch's proposals pooled
            order = flat.argsort(descending=True)
            pooled = r * batch
            nxt = flat[order[min(pooled, flat.numel() - 1)]]  # the (r·B+1)-th best
            self.recorded.setdefault(inputs.layer, []).append(max(float(nxt), 0.0))
            merging = torch.zeros_like(flat, dtype=torch.bool)
            merging[order[:pooled]] = True
            merging &= torch.isfinite(flat)  # never protected tokens or padding
            return plan_from_merging(proposals, merging.view(batch, -1), inputs.valid)


def running_threshold(values: Sequence[float]) -> float:
    """DyMU's ``threshold_running_avg``: the buffer starts at 1.0 (no merging); the first value
    replaces it, later ones update the running mean ``(τ·n + v) / (n + 1)``."""
    threshold, count = 1.0, 1.0
    for value in values:
        if threshold == 1.0:
            threshold = float(value)
        else:
            threshold = (threshold * count + float(value)) / (count + 1)
            count += 1
    return threshold


def calibrate_thresholds_dymu(
    model: str | LoadedModel, images: Sequence[Any], r_per_layer: Sequence[int], batch_size: int = 8
) -> list[float]:
    """DyMU's calibration rule: per-layer thresholds from batches of ``images`` (see the module docstring).

    model: a loaded image model or a name for :func:`tomviz.load`; images: anything its
    ``prepare`` accepts, all of one size; r_per_layer: ``[L]``, the tokens each layer should
    remove per image on average; batch_size: ``B``. Returns ``[L]`` floats (1.0, DyMU's
    "no merging", where ``r`` is 0).
    """
    loaded = load(model) if not isinstance(model, LoadedModel) else model
    if len(r_per_layer) != loaded.num_layers:
        raise ValueError(f"r_per_layer has {len(r_per_layer)} entries, the model has {loaded.num_layers} layers")
    prepared = [loaded.prepare(image) for image in images]
    method = DyMUCalibration()
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start : start + batch_size]
        keys = chunk[0].tensors.keys()
        try:
            tensors = {k: torch.cat([p.tensors[k] for p in chunk]) for k in keys}
        except RuntimeError as err:
            raise ValueError(f"calibrate_thresholds_dymu needs inputs of one size: {err}") from err
        config = MergeRequest(method=method, r=list(r_per_layer)).config()
        loaded.run(PreparedInput(tensors=tensors, meta=dict(chunk[0].meta)), config)
    return [running_threshold(method.recorded.get(layer, [])) for layer in range(loaded.num_layers)]


def calibrate_default(out: Path = DEFAULT_CALIBRATION, r_values: Sequence[int] = CALIBRATED_R) -> dict[str, Any]:
    """Rebuild the shipped table: ``dinov2-small`` on the example photos, one constant schedule per r."""
    from tqdm import tqdm

    loaded = load(DEFAULT_MODEL["image"], device="cpu")
    images = [ASSETS / name for name in EXAMPLE_PHOTOS]
    raw = [calibrate_thresholds(loaded, images, [r] * loaded.num_layers) for r in tqdm(r_values, desc="calibrating r")]
    table = torch.tensor(raw).cummin(dim=0).values.tolist()  # [len(r), num_layers], non-increasing in r
    data = {
        "model": DEFAULT_MODEL["image"],
        "images": list(EXAMPLE_PHOTOS),
        "schedule": "constant r per layer",
        "r": list(r_values),
        "thresholds": table,  # [len(r), num_layers], running minimum over r
        "raw_thresholds": raw,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    return data


if __name__ == "__main__":
    calibrate_default()
