"""The sweep under the Compare tab: its handler on an example photo and a prompt, and bad input."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from tomviz.ui import sweep_section as ss

pytestmark = pytest.mark.slow  # the embedded dinov2-small / minilm

CAT = str(Path(__file__).resolve().parents[2] / "assets" / "chelsea.png")
PROMPT = "The cat sat on the mat, and the dog sat on the log next to the cat."


@pytest.fixture(autouse=True)
def _quick_sweep(monkeypatch):
    monkeypatch.setattr(ss, "SWEEP_RUNS", 1)
    monkeypatch.setattr(ss, "SWEEP_WARMUP", 0)


def test_sweep_image_skips_text_only_methods():
    out = ss.run_sweep("image", CAT, None, "dinov2-small", ["tome", "random", "subword"], "0.5, 0")
    rows = out.table
    assert [(r[0], r[1]) for r in rows] == [("tome", 0.0), ("tome", 0.5), ("random", 0.0), ("random", 0.5)]
    assert rows[1][2] == 129 and rows[0][3] == pytest.approx(1.0, abs=1e-5)
    header = Path(out.csv).read_text().splitlines()[0]
    assert header.startswith("input,method,ratio") and len(Path(out.csv).read_text().splitlines()) == 5
    assert len(out.figure.data) == 4  # two methods × (fidelity, speed-up)


def test_sweep_text():
    out = ss.run_sweep("text", None, PROMPT, "minilm", ["tome", "subword"], "0.5")
    assert {r[0] for r in out.table} == {"tome", "subword"}


@pytest.mark.parametrize("call, message", [
    (lambda: ss.run_sweep("image", CAT, None, "dinov2-small", ["tome"], "0, half"), "not a number"),
    (lambda: ss.run_sweep("image", CAT, None, "dinov2-small", [], "0.5"), "no method"),
    (lambda: ss.run_sweep("image", CAT, None, "dinov2-small", ["subword"], "0.5"), "no method left"),
    (lambda: ss.run_sweep("text", None, PROMPT, "dinov2-small", ["tome"], "0.5"), "image model"),
    (lambda: ss.run_sweep("image", CAT, None, "dinov2-small", ["tome", "evit"], ", ".join(f"{k / 100:g}" for k in range(31))),
     "62 settings; at most 60"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(gr.Error, match=message):
        call()


def test_parse_ratios():
    assert ss.parse_ratios("0.5, 0;0.25 0.5") == [0.0, 0.25, 0.5]
    with pytest.raises(ValueError, match="between 0 and"):
        ss.parse_ratios("0.99")
