"""The example results file in ``assets/bench_example`` (what the Benchmark tab opens on): it says which
command made it, its summary is what its rows summarise to, and it covers the settings that command asks for."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from tomviz.bench import read_summary, summarise
from tomviz.bench.results import read_rows

EXAMPLE = Path(__file__).resolve().parents[2] / "assets" / "bench_example"


def test_summary_names_its_command_and_matches_its_rows():
    summary, meta = read_summary((EXAMPLE / "summary.json").read_text())
    command = shlex.split(meta["command"])
    assert command[:4] == ["python", "-m", "tomviz", "bench"]
    methods = command[command.index("--methods") + 1: command.index("--ratios")]
    ratios = command[command.index("--ratios") + 1: command.index("--prop-attn")]
    assert {(e["method"], e["ratio"]) for e in summary} == {(m, float(r)) for m in methods for r in ratios}
    assert all(e["errors"] == 0 and e["ran"] == meta["inputs"] for e in summary)

    pytest.importorskip("pyarrow")
    rows = read_rows(EXAMPLE / "results.parquet")
    assert len(rows) == meta["inputs"] * meta["settings"]
    by_setting = {e["setting"]: e for e in json.loads(json.dumps(summarise(rows), default=str))}
    for entry in summary:
        again = by_setting[entry["setting"]]
        assert again["cosine"] == pytest.approx(entry["cosine"]) and again["tokens_out"] == entry["tokens_out"]
