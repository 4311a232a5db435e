"""Opening a results file someone uploaded (the app's Benchmark tab), in bounded pieces.

A file small on disk can decode into a great deal: a Parquet file of a few hundred KB whose rows repeat
a long string (dictionary encoding stores it once), or a ``summary.json`` of millions of empty rows.
:func:`read_uploaded_results` bounds what is decoded, not only the file's size:

* Parquet: the row count and every column's uncompressed size are read from the footer first; string
  columns are read as dictionaries (each distinct string decoded once) and their longest value is checked
  before any row becomes a Python object; rows arrive ``BATCH_ROWS`` at a time and are folded into a
  :class:`~tomviz.bench.results.Summary`, which holds sums per setting, never the rows.
* JSON: at most ``max_json_bytes``; a list of rows is then folded the same way.
* Both: at most ``max_settings`` distinct settings; entries without a model or method are dropped, and
  strings are cut to ``max_text`` characters.

Every bound refused raises a ValueError whose message says which bound and its value.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tomviz.bench.results import COLUMNS, SCHEMA, SUMMARY_KEYS, Summary

BATCH_ROWS = 4096

SUMMARY_TYPES = {"model": "string", "setting": "string", "method": "string", "schedule": "string", "first_error": "string",
                 "prop_attn": "bool"}  # the others are numbers


@dataclass(frozen=True)
class UploadBudget:
    """What one uploaded results file may cost (defaults: the public app's)."""

    max_rows: int = 300_000  # rows of a results.parquet or of a JSON list of rows
    max_decoded_bytes: int = 64 * 2**20  # uncompressed bytes of the columns read (Parquet)
    max_json_bytes: int = 4 * 2**20  # a summary.json (one entry per setting: small however large the run)
    max_settings: int = 2000  # distinct settings (entries of the summary)
    max_text: int = 200  # characters of a model, method or setting name; longer errors are cut


def read_uploaded_results(path: str | Path, budget: UploadBudget = UploadBudget()) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(summary, meta)`` of a ``.parquet`` or ``.json`` results file within ``budget``; ValueError otherwise."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return _read_json(path, budget)
    return _clean(_read_parquet(path, budget).entries(), budget), {}


def _read_json(path: Path, budget: UploadBudget) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    size = path.stat().st_size
    if size > budget.max_json_bytes:
        raise ValueError(f"the JSON file has {size / 2**20:.1f} MiB; at most {budget.max_json_bytes / 2**20:.0f} MiB "
                         "(a summary.json holds one entry per setting)")
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (ValueError, RecursionError):
        raise ValueError("this .json file is not valid JSON") from None
    if isinstance(data, dict) and isinstance(data.get("summary"), list):
        entries, meta = data["summary"], data.get("meta") if isinstance(data.get("meta"), dict) else {}
        if len(entries) > budget.max_settings:
            raise ValueError(f"{len(entries)} settings; at most {budget.max_settings} can be opened here")
        meta = {k: _text(meta.get(k), budget) for k in ("inputs", "batch_size", "command") if k in meta}  # command: as bounded text
        return _clean(entries, budget), meta
    if isinstance(data, list):
        if len(data) > budget.max_rows:
            raise ValueError(f"{len(data)} rows; at most {budget.max_rows} can be opened here")
        summary = Summary(budget.max_settings)
        for start in range(0, len(data), BATCH_ROWS):
            summary.add(_row(row, budget) for row in data[start:start + BATCH_ROWS] if isinstance(row, dict))
        return _clean(summary.entries(), budget), {}
    raise ValueError("not a tomviz bench summary (expected {\"summary\": [...]} or a list of rows)")


def _read_parquet(path: Path, budget: UploadBudget) -> Summary:
    import pyarrow.parquet as pq

    with path.open("rb") as handle:
        if handle.read(4) != b"PAR1":
            raise ValueError("this .parquet file is not Parquet")
    file = pq.ParquetFile(str(path))
    meta = file.metadata
    if meta.num_rows > budget.max_rows:
        raise ValueError(f"{meta.num_rows} rows; at most {budget.max_rows} can be opened here")
    names = [c for c in file.schema_arrow.names if c in SCHEMA or c == "mode"]  # "mode": the old name of "schedule"
    declared = sum(meta.row_group(g).column(c).total_uncompressed_size for g in range(meta.num_row_groups)
                   for c in range(meta.num_columns) if meta.row_group(g).column(c).path_in_schema in names)
    if declared > budget.max_decoded_bytes:
        raise ValueError(f"the file decodes to {declared / 2**20:.0f} MiB; at most "
                         f"{budget.max_decoded_bytes / 2**20:.0f} MiB can be opened here")
    strings = [c for c in names if SCHEMA.get(c, "string") == "string"]
    file = pq.ParquetFile(str(path), read_dictionary=strings)
    summary, decoded = Summary(budget.max_settings), 0
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=names):
        decoded += batch.nbytes
        if decoded > budget.max_decoded_bytes:
            raise ValueError(f"the file decodes to more than {budget.max_decoded_bytes / 2**20:.0f} MiB; "
                             "at most that can be opened here")
        columns = {name: _column(batch.column(i), name, budget) for i, name in enumerate(batch.schema.names)}
        if "mode" in columns:
            columns.setdefault("schedule", columns.pop("mode"))
        summary.add({k: columns[k][i] if k in columns else None for k in COLUMNS} for i in range(batch.num_rows))
    return summary


def _column(array: Any, name: str, budget: UploadBudget) -> list[Any]:
    """A batch's column as Python values; a string column's longest distinct value is checked first."""
    import pyarrow as pa
    import pyarrow.compute as pc

    dictionary = pa.types.is_dictionary(array.type)
    values = array.dictionary if dictionary else array
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        longest = pc.max(pc.utf8_length(values)).as_py() if len(values) else 0
        if longest and longest > budget.max_text:
            if name != "error":
                raise ValueError(f"a {name!r} cell has {longest} characters; at most {budget.max_text}")
            values = pc.utf8_slice_codeunits(values, 0, budget.max_text)
            array = pa.DictionaryArray.from_arrays(array.indices, values) if dictionary else values
    return array.to_pylist()


def _typed(kind: str, value: Any, budget: UploadBudget) -> Any:
    """``value`` if it has the ``kind`` of :data:`SCHEMA` ("string" cut to ``max_text``), else None."""
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if kind in ("int64", "float64"):
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return None if value is None else _text(value, budget)


def _text(value: Any, budget: UploadBudget) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value)[: budget.max_text + 1]
    return text if len(text) <= budget.max_text else text[: budget.max_text - 1] + "…"


def _row(row: dict[str, Any], budget: UploadBudget) -> dict[str, Any]:
    return {k: _typed(SCHEMA[k], row.get(k), budget) for k in COLUMNS}


def _clean(entries: list[Any], budget: UploadBudget) -> list[dict[str, Any]]:
    """Entries with a model and a method, only the summary's keys, each of its type (strings cut to ``max_text``)."""
    out = []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("model") not in (None, "") and entry.get("method") not in (None, ""):
            out.append({k: _typed(SUMMARY_TYPES.get(k, "float64"), entry.get(k), budget) for k in SUMMARY_KEYS})
    return out
