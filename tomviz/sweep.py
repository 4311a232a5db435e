"""Sweep: fidelity and measured speed of every method × ratio on one input.

For each (method, ratio) one forward gives the final token count and the output,
compared with the unmerged forward by :func:`tomviz.measure.compare` (the metric code
that ``python -m tomviz bench`` uses too):

* ``cosine``: cosine similarity of the final embedding to the unmerged one
  (:func:`tomviz.fidelity.final_embeddings`: logits for classifiers, the pooled
  image embedding, the size-weighted token mean for text encoders);
* ``top1_agree`` / ``top5_overlap``: for classifiers, whether the top-1 class is
  unchanged and the share of the unmerged top-5 classes kept (else None);
* ``gflops`` / ``base_gflops``: analytic GFLOPs of the layers, merged and unmerged;
* ``latency_s``: median of ``runs`` untraced forwards (``torch.inference_mode``) after
  ``warmup`` untimed ones; ``baseline_latency_s`` is the unmerged model, measured in
  the same sweep; ``speedup`` = baseline / latency.

A ratio a method cannot reach gives a row with ``error`` set and no figures.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from tomviz.measure import compare, measured_forward
from tomviz.merge.engine import MergeConfig
from tomviz.merge.request import MergeRequest
from tomviz.merge.schedule import ScheduleError
from tomviz.models.loading import LoadedModel, PreparedInput, load
from tomviz.speed import measure_latency


@dataclass
class SweepRow:
    """One method × ratio of a sweep (see the module docstring); the figures are None when ``error`` is set."""

    input: str
    method: str
    ratio: float
    tokens_in: int | None = None
    tokens_out: int | None = None
    cosine: float | None = None
    top1_agree: bool | None = None  # classifiers only
    top5_overlap: float | None = None  # classifiers only
    gflops: float | None = None
    base_gflops: float | None = None
    latency_s: float | None = None
    baseline_latency_s: float | None = None
    speedup: float | None = None
    error: str | None = None


COLUMNS = tuple(f.name for f in fields(SweepRow))  # the CSV header


def sweep(
    model: str | LoadedModel,
    x: Any,
    methods: Sequence[str],
    ratios: Sequence[float],
    runs: int = 3,
    warmup: int = 1,
    schedule: str = "constant",
    prop_attn: bool = True,
    method_options: dict[str, dict[str, Any]] | None = None,
    input_name: str = "",
    progress: bool = False,
    mode: str | None = None,
) -> list[SweepRow]:
    """Rows (one per method × ratio) for input ``x`` on ``model``.

    schedule: how each ratio spreads over the layers ("constant" | "decreasing"; ``mode=`` is its old name, deprecated).
    method_options: per method name, its options (e.g. ``{"dtome": {"threshold": 0.9}}``).
    """
    template = MergeRequest.from_kwargs("sweep", schedule=schedule, prop_attn=prop_attn, mode=mode)
    loaded = load(model) if not isinstance(model, LoadedModel) else model
    inputs: PreparedInput = loaded.prepare(x)
    extra = inputs.method_extra()

    base_config = MergeConfig.unmerged(extra=dict(extra))
    base = measured_forward(loaded, inputs, base_config)
    tokens_in = base.tokens_in
    base_latency = measure_latency(loaded, inputs, base_config, runs=runs, warmup=warmup)

    jobs = [(m, float(r)) for m in methods for r in ratios]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc=f"sweep {input_name or 'input'}", unit="run")
    rows = []
    for method, ratio in jobs:
        row = SweepRow(input=input_name, method=method, ratio=ratio, tokens_in=tokens_in, baseline_latency_s=base_latency)
        try:
            request = replace(template, method=method, method_options=(method_options or {}).get(method, {}), r=None,
                              ratio=ratio)
            merged = request.config(extra=extra)
            (metrics,) = compare(measured_forward(loaded, inputs, merged), base)
        except (ScheduleError, ValueError) as err:
            row.error = str(err)
            rows.append(row)
            continue
        row.tokens_out, row.cosine = metrics.tokens_out, metrics.agreement.cosine
        row.top1_agree, row.top5_overlap = metrics.agreement.top1_agree, metrics.agreement.top5_overlap
        row.gflops, row.base_gflops = metrics.gflops, metrics.base_gflops
        row.latency_s = measure_latency(loaded, inputs, merged, runs=runs, warmup=warmup)
        row.speedup = base_latency / row.latency_s
        rows.append(row)
    return rows


def to_csv(rows: Iterable[SweepRow], path: str | Path) -> Path:
    """Write the rows with the ``COLUMNS`` header (None as an empty cell)."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    return path
