"""The Benchmark tab's handlers: it opens uploaded results files only, bounded, Parquet or JSON."""
from __future__ import annotations

import json
import pickle
import shutil

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
