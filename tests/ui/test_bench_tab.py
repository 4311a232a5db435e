"""The Benchmark tab's handlers: it opens uploaded results files only, bounded, Parquet or JSON."""
from __future__ import annotations

import json
import pickle
import shutil
import time

import gradio as gr
import pytest
from gradio.utils import get_upload_folder

from tomviz.bench import BenchSpec, list_items, make_settings, run_bench
from tomviz.ui import bench_tab as bt


@pytest.fixture(scope="module")
def results(tiny_classifier, image_folder, tmp_path_factory):
    items = [i for i in list_items(image_folder) if i.label == "blue"]
    spec = BenchSpec(models=[tiny_classifier], settings=make_settings(["tome", "random"], [0.25, 0.5]), batch_size=4)
    return run_bench(spec, items, tmp_path_factory.mktemp("tab"), engine="local").out


def _upload(path, name):
    """Place a file where Gradio keeps uploads (as an upload through the UI or gradio_client would)."""
    folder = get_upload_folder()
    target = f"{folder}/tomviz-test/{name}"
    import os

    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy(path, target)
    return target


@pytest.mark.parametrize("name", ["results.parquet", "summary.json"])
def test_open_uploaded_results(results, name):
    summary, dropdown, figure, rows, text = bt.open_results(_upload(results / name, name), "accuracy", "speedup")
    assert len(summary) == 4 and len(rows) == 4 and "4 settings" in text
    assert dropdown.value == "accuracy" and figure.layout.yaxis.title.text == "accuracy (labels)"
    names = [t.name for t in figure.data]
    assert "random (baseline)" in names and "tome" in names and "Pareto front" in names
    assert bt.redraw(summary, "cosine", "flops_speedup").layout.xaxis.title.text.startswith("speed-up, analytic")


def test_refuses_server_paths_pickles_and_large_files(results, tmp_path, monkeypatch):
    with pytest.raises(gr.Error, match="only files uploaded here"):
        bt.open_results(str(results / "summary.json"))  # a server path, not an upload
    with pytest.raises(gr.Error, match="only files uploaded here"):
        bt.open_results(_upload(results / "summary.json", "x.json") + "/../../../../../etc/passwd")
    pickled = tmp_path / "rows.pkl"
    pickled.write_bytes(pickle.dumps([{"model": "m"}]))
    with pytest.raises(gr.Error, match="not a results file"):
        bt.open_results(_upload(pickled, "rows.pkl"))
    with pytest.raises(gr.Error, match="not Parquet"):
        bt.open_results(_upload(pickled, "rows.parquet"))
    with pytest.raises(gr.Error):
        bt.open_results(_upload(pickled, "rows.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"something": 1}))
    with pytest.raises(gr.Error, match="not a tomviz bench summary"):
        bt.open_results(_upload(bad, "bad.json"))
    monkeypatch.setattr(bt, "MAX_RESULTS_BYTES", 100)
    with pytest.raises(gr.Error, match="at most"):
        bt.open_results(_upload(results / "results.parquet", "big.parquet"))
    monkeypatch.setattr(bt, "MAX_RESULTS_BYTES", 2**25)
    monkeypatch.setattr(bt, "MAX_ROWS", 3)
    with pytest.raises(gr.Error, match="at most 3 can be opened"):
        bt.open_results(_upload(results / "results.parquet", "many.parquet"))


def _rss() -> int:
    from pathlib import Path

    return next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmRSS:"))


def _parquet(path, rows: int, **columns):
    """A results.parquet of ``rows`` rows whose ``columns`` repeat one value each (dictionary-encoded: tiny on disk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = dict(model="m", setting="s", method="tome", ratio=0.5, cosine=0.9, seconds=0.1, base_seconds=0.2)
    base.update(columns)
    table = pa.table({k: pa.array([v] * rows) for k, v in base.items()})
    pq.write_table(table, path, compression="zstd")
    return path


def test_uploads_that_decode_large_are_refused_from_bounded_pieces(tmp_path):
    bomb = _parquet(tmp_path / "long.parquet", 100_000, method="x" * 20_000)  # 2 GB of strings once decoded
    assert bomb.stat().st_size < 1_000_000
    before = _rss()
    with pytest.raises(gr.Error, match="'method' cell has 20000 characters"):
        bt.open_results(_upload(bomb, "long.parquet"))
    assert _rss() - before < 250 * 2**20
    errors = _parquet(tmp_path / "errors.parquet", 1000, error="e" * 20_000)  # long errors are cut, not refused
    summary, *_ = bt.open_results(_upload(errors, "errors.parquet"))
    assert summary[0]["errors"] == 1000 and len(summary[0]["first_error"]) <= 200
    plain = tmp_path / "plain.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"model": ["m"] * 2000, "method": [f"{i:05d}" + "y" * 40_000 for i in range(2000)]}),
                   plain, use_dictionary=False, compression="zstd")
    with pytest.raises(gr.Error, match="decodes to"):
        bt.open_results(_upload(plain, "plain.parquet"))


def test_json_uploads_are_bounded_in_rows_settings_and_lines(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[" + ",".join(["{}"] * 200_000) + "]")  # rows with nothing in them
    start, before = time.monotonic(), _rss()
    with pytest.raises(gr.Error, match="no benchmark results"):
        bt.open_results(_upload(empty, "empty.json"))
    assert time.monotonic() - start < 30 and _rss() - before < 250 * 2**20
    many = tmp_path / "many.json"
    many.write_text("[" + ",".join(["{}"] * 400_000) + "]")
    with pytest.raises(gr.Error, match="at most 300000"):
        bt.open_results(_upload(many, "many.json"))
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps([{"model": "m", "method": f"m{i}", "cosine": 1.0} for i in range(30_000)]))
    with pytest.raises(gr.Error, match="distinct settings"):
        bt.open_results(_upload(settings, "settings.json"))
    lines = tmp_path / "lines.json"
    lines.write_text(json.dumps({"summary": [{"model": "m", "method": f"m{i}", "ratio": 0.5, "cosine": 1.0, "speedup": 1.2}
                                             for i in range(bt.MAX_LINES + 1)]}))
    with pytest.raises(gr.Error, match=f"at most {bt.MAX_LINES}"):
        bt.open_results(_upload(lines, "lines.json"))
    odd = tmp_path / "odd.json"  # wrong types: dropped, not drawn
    odd.write_text(json.dumps({"summary": [{"model": "m", "method": "tome", "ratio": "x", "cosine": "high", "speedup": 2}]}))
    with pytest.raises(gr.Error, match="no setting in the file has a quality figure"):
        bt.open_results(_upload(odd, "odd.json"))
    odd.write_text(json.dumps({"summary": [{"model": "m", "method": "tome", "ratio": "x", "cosine": 0.5, "speedup": 2}]}))
    summary, _, _, rows, _ = bt.open_results(_upload(odd, "odd2.json"))
    assert summary[0]["cosine"] == 0.5 and summary[0]["ratio"] is None and len(rows) == 1
