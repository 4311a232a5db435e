"""Every tab opens on a real result: the page-load handlers (tomviz/ui/examples.py and the tabs' open_*),
called directly; the examples run the embedded DINOv2-S once per process."""
from __future__ import annotations

import threading
import time

import plotly.graph_objects as go
import pytest
from PIL import Image

from tomviz.models import hub
from tomviz.ui import bench_tab, compare_tab, scores_tab, sweep_section, vlm_tab
from tomviz.ui.examples import computed_once


def test_computed_once_runs_once_for_concurrent_callers_and_retries_after_an_error():
    calls = []

    @computed_once
    def slow():
        calls.append(1)
        time.sleep(0.2)
        if len(calls) == 1:
            raise RuntimeError("first try fails")
        return object()

    with pytest.raises(RuntimeError):
        slow()
    results = []
    threads = [threading.Thread(target=lambda: results.append(slow())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 2 and len({id(r) for r in results}) == 1


def test_benchmark_opens_on_the_shipped_example_and_names_its_command():
    summary, y, figure, rows, text = bench_tab.open_example_results()
    assert len(summary) == len(rows) == 15 and isinstance(figure, go.Figure) and len(figure.data) >= 5
    assert "python -m tomviz bench assets" in text and "Upload your own" in text


def test_the_hub_notice_says_what_the_tab_would_show_only_when_the_hub_is_out_of_reach(monkeypatch):
    monkeypatch.setattr(hub, "hub_unreachable", lambda: "HF_HUB_OFFLINE is set")
    monkeypatch.setattr(hub, "is_cached", lambda model: False)
    notice = vlm_tab.hub_notice()
    assert "cannot reach the Hugging Face hub" in notice and "both answers" in notice
    monkeypatch.setattr(hub, "is_cached", lambda model: True)  # weights in the cache: it runs offline
    assert vlm_tab.hub_notice() == ""
    monkeypatch.setattr(hub, "hub_unreachable", lambda: None)
    assert vlm_tab.hub_notice() == ""


def test_hub_unreachable_is_cheap_and_remembered(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_unreachable() == "HF_HUB_OFFLINE is set"  # no network at all
    monkeypatch.delenv("HF_HUB_OFFLINE")
    probes = []
    monkeypatch.setattr(hub, "probe_hub", lambda timeout: probes.append(timeout) or "no route")
    monkeypatch.setattr(hub, "_hub_check", None)
    assert hub.hub_unreachable() == hub.hub_unreachable() == "no route" and probes == [1.5]


@pytest.mark.slow
def test_compare_opens_on_tome_vs_pitome_on_the_cat():
    image, session, *views = compare_tab.open_example()
    out = compare_tab.CompareOutputs(session, *views)
    assert image.endswith("chelsea.png") and session.names == ("A: tome @ 0.5", "B: pitome @ 0.5")
    assert session is not compare_tab.example_comparison().session  # the visitor's own copy
    assert isinstance(out.overlay_a, Image.Image) and isinstance(out.diff_image, Image.Image)
    assert isinstance(out.counts, go.Figure) and len(out.table) == 2


@pytest.mark.slow
def test_sweep_opens_on_the_examples_sweep_with_a_fresh_csv():
    first, second = sweep_section.open_example_sweep(), sweep_section.open_example_sweep()
    assert isinstance(first.figure, go.Figure) and len(first.table) == 4 * 5
    assert first.csv != second.csv and open(second.csv).read() == open(first.csv).read()
    assert all(row[-1] == "" for row in first.table)  # every setting ran


@pytest.mark.slow
def test_scores_open_on_a_banzhaf_estimate_of_the_example_photo():
    out = scores_tab.open_banzhaf_example()
    assert isinstance(out.heat, Image.Image) and isinstance(out.values, go.Figure) and "players" in out.summary
    assert out.session is not scores_tab.example_banzhaf().session
