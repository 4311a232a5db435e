"""Benchmarks over many inputs: models × methods × ratios × proportional attention, on Ray or in process.

``python -m tomviz bench INPUT --out DIR`` (see :mod:`tomviz.cli`). The engine never imports gradio; the
report is drawn by :mod:`tomviz.render.bench`, the app's view lives in :mod:`tomviz.ui.bench_tab`.
"""
from __future__ import annotations

from tomviz.bench.engine import BenchRun, run_bench
from tomviz.bench.inputs import Item, label_id, list_items
from tomviz.bench.results import COLUMNS, read_rows, read_summary, summarise
from tomviz.bench.spec import BenchSpec, Setting, Shard, make_settings, make_shards, read_toml

__all__ = ["COLUMNS", "BenchRun", "BenchSpec", "Item", "Setting", "Shard", "label_id", "list_items", "make_settings",
           "make_shards", "read_rows", "read_summary", "read_toml", "run_bench", "summarise"]
