"""`tomviz bench` through the CLI's entry function, in process, on the tiny classifier."""
from __future__ import annotations

import json


def test_cli_bench_in_process(tiny_classifier, image_folder, tmp_path, capsys):
    from tomviz.cli import main

    out = tmp_path / "out"
    config = tmp_path / "bench.toml"
    config.write_text('methods = ["tome", "random"]\nratios = [0.25]\nprop_attn = [true, false]\nbatch_size = 4\n')
    code = main(["bench", str(image_folder), "--config", str(config), "--model", tiny_classifier, "--ratios", "0.5",
                 "--engine", "local", "--no-progress", "--out", str(out)])  # --ratios wins over the file's
    assert code == 0
    said = capsys.readouterr().out
    assert "22 inputs × 4 settings × 1 model(s) = 88 rows" in said and "input: This file" in said
    summary = json.loads((out / "summary.json").read_text())
    assert {e["setting"] for e in summary["summary"]} == {f"{m} ratio=0.5 constant {p}" for m in ("tome", "random")
                                                          for p in ("prop", "noprop")}
    assert summary["meta"]["batch_size"] == 4
    assert (out / "report.html").read_text().count("Pareto front") >= 1 and (out / "results.parquet").exists()
