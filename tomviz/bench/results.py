"""Benchmark results: one row per input × setting × model (``COLUMNS``), stored per shard as Parquet;
and a summary per setting.

Reading needs ``pyarrow`` for Parquet. The summary (:func:`summarise`) is plain JSON, small enough for
the app to open however large the benchmark was.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

# name -> pyarrow type name (nullable; a failed row leaves the figures empty)
SCHEMA: dict[str, str] = {
    "model": "string", "item": "string", "label": "string", "label_id": "int64", "shard": "string",
    "setting": "string", "method": "string", "ratio": "float64", "r": "int64", "schedule": "string", "prop_attn": "bool",
    "tokens_in": "int64", "tokens_out": "int64", "gflops": "float64", "base_gflops": "float64",
    "cosine": "float64", "top1_agree": "bool", "top5_overlap": "float64", "correct": "bool", "base_correct": "bool",
    "seconds": "float64",  # this input's share of its batch's merged forward (batch seconds / batch size)
    "base_seconds": "float64",  # the same for the unmerged forward of the batch
    "batch_size": "int64", "device": "string", "worker": "string", "error": "string",
    # clips through a temporal method (tomviz.bench.clips): frames sampled and the method's own cost; there
    # "seconds" is the per-frame encoder plus the method for the clip and "base_seconds" the encoder alone
    "frames": "int64", "method_ms_per_frame": "float64",
}
COLUMNS = tuple(SCHEMA)
SETTING_KEYS = ("model", "setting", "method", "ratio", "r", "schedule", "prop_attn")
SUMMARY_KEYS = set(SETTING_KEYS) | {"inputs", "ran", "errors", "cosine", "top1_agree", "top5_overlap", "accuracy",
                                    "base_accuracy", "tokens_in", "tokens_out", "gflops", "base_gflops", "flops_speedup",
                                    "throughput", "base_throughput", "speedup", "first_error",
                                    "method_ms_per_frame"}  # what a summary entry keeps


def arrow_schema():
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
    return pa.schema([(name, types[kind]) for name, kind in SCHEMA.items()])


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as Parquet, atomically (a killed writer leaves no half file under ``path``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{k: row.get(k) for k in COLUMNS} for row in rows], schema=arrow_schema())
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    pq.write_table(table, partial)
    os.replace(partial, path)
    return path


def read_rows(path: str | Path, max_rows: int | None = None) -> list[dict[str, Any]]:
    """Rows of one Parquet file (columns outside ``COLUMNS`` are dropped, missing ones are None)."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(str(path))
    if max_rows is not None and file.metadata.num_rows > max_rows:
        raise ValueError(f"{file.metadata.num_rows} rows; at most {max_rows} can be opened here")
    names = [c for c in file.schema_arrow.names if c in SCHEMA or c == "mode"]  # "mode": the old name of "schedule"
    table = file.read(columns=names)
    rows = table.to_pylist()
    for row in rows:
        if "mode" in row:
            row.setdefault("schedule", row.pop("mode"))
    return [{k: row.get(k) for k in COLUMNS} for row in rows]


def _mean(values: Iterable[Any]) -> float | None:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


MEANS = ("cosine", "top1_agree", "top5_overlap", "tokens_in", "tokens_out", "gflops", "base_gflops",
         "method_ms_per_frame")  # over the rows that ran


class Summary:
    """Builds :func:`summarise`'s entries from rows added in pieces, holding sums per setting (not rows):
    memory grows with the number of settings, never with the number of rows. ``max_settings``: a
    ValueError once more distinct settings than this arrive."""

    def __init__(self, max_settings: int | None = None) -> None:
        self.max_settings = max_settings
        self._groups: dict[tuple, dict[str, Any]] = {}

    def add(self, rows: Iterable[dict[str, Any]]) -> "Summary":
        for row in rows:
            key = tuple(row.get(k) for k in SETTING_KEYS)
            group = self._groups.get(key)
            if group is None:
                if self.max_settings is not None and len(self._groups) >= self.max_settings:
                    raise ValueError(f"more than {self.max_settings} distinct settings; at most {self.max_settings} "
                                     "can be opened here")
                group = self._groups[key] = dict(inputs=0, ran=0, errors=0, labelled=0, seconds=0.0, base_seconds=0.0,
                                                 sums={}, first_error=None)
            self._add(group, row)
        return self

    @staticmethod
    def _add(group: dict[str, Any], row: dict[str, Any]) -> None:
        def accumulate(name: str, value: Any) -> None:
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                total, count = group["sums"].get(name, (0.0, 0))
                group["sums"][name] = (total + float(value), count + 1)

        group["inputs"] += 1
        if row.get("error"):
            group["errors"] += 1
            group["first_error"] = group["first_error"] or row["error"]
        if row.get("cosine") is None:
            return
        group["ran"] += 1
        for name in MEANS:
            accumulate(name, row.get(name))
        if row.get("correct") is not None:
            accumulate("accuracy", row["correct"])
            accumulate("base_accuracy", row.get("base_correct"))
        group["seconds"] += row["seconds"] if row.get("seconds") is not None else 0.0
        group["base_seconds"] += row["base_seconds"] if row.get("base_seconds") is not None else 0.0

    def entries(self) -> list[dict[str, Any]]:
        """One entry per setting (see :func:`summarise`), sorted by model, method, prop_attn, ratio, r."""
        out = []
        for key, g in self._groups.items():
            mean = {name: (t / n if n else None) for name, (t, n) in g["sums"].items()}
            gflops, base_gflops, seconds, base_seconds = mean.get("gflops"), mean.get("base_gflops"), g["seconds"], g["base_seconds"]
            entry = dict(zip(SETTING_KEYS, key))
            entry.update(
                inputs=g["inputs"], ran=g["ran"], errors=g["errors"],
                **{name: mean.get(name) for name in ("cosine", "top1_agree", "top5_overlap", "accuracy", "base_accuracy",
                                                     "tokens_in", "tokens_out", "method_ms_per_frame")},
                gflops=gflops, base_gflops=base_gflops, flops_speedup=(base_gflops / gflops) if gflops else None,
                throughput=(g["ran"] / seconds) if seconds > 0 else None,
                base_throughput=(g["ran"] / base_seconds) if base_seconds > 0 else None,
                speedup=(base_seconds / seconds) if seconds > 0 else None, first_error=g["first_error"],
            )
            out.append(entry)
        out.sort(key=lambda e: (str(e["model"]), str(e["method"]), bool(e["prop_attn"]) is False, e["ratio"] if e["ratio"] is not None else -1, e["r"] or 0))
        return out


def summarise(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per model × setting: means over the inputs that ran, and the measured speed-up.

    ``speedup`` = total unmerged seconds / total merged seconds over those inputs (a throughput ratio);
    ``flops_speedup`` = unmerged GFLOPs / merged GFLOPs; ``accuracy`` and ``base_accuracy`` over the
    inputs with a label the model has; ``errors`` counts the rows with an error (figures may be missing).
    """
    return Summary().add(rows).entries()


def write_summary(summary: list[dict[str, Any]], path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.write_text(json.dumps({"tomviz_bench": 1, "meta": meta or {}, "summary": summary}, indent=1, default=str))
    return path


def read_summary(text: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(summary, meta)`` from the JSON that :func:`write_summary` writes, or from a JSON list of rows."""
    data = json.loads(text)
    if isinstance(data, dict) and isinstance(data.get("summary"), list):
        entries, meta = data["summary"], data.get("meta") if isinstance(data.get("meta"), dict) else {}
    elif isinstance(data, list):
        entries, meta = summarise([{k: r.get(k) for k in COLUMNS} for r in data if isinstance(r, dict)]), {}
    else:
        raise ValueError("not a tomviz bench summary (expected {\"summary\": [...]} or a list of rows)")
    return [{k: e.get(k) for k in SUMMARY_KEYS} for e in entries if isinstance(e, dict)], meta
