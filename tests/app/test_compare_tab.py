"""The Compare / Sweep tab: its module-level handlers on an example photo and a prompt, bad input, and one
round trip through gradio_client against the launched app."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tomviz.ui import compare_tab as ct

ASSETS = Path(__file__).resolve().parents[2] / "assets"
CAT = str(ASSETS / "chelsea.png")
PROMPT = "The cat sat on the mat, and the dog sat on the log next to the cat."
# compare() returns ct.CompareOutputs (named fields); gradio_client returns the same fields in order, less the session
API_FIELDS = ct.CompareOutputs._fields[1:]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread, as the app runs (app.configure_torch_threads): on a busy 2-core CI machine two
    threads spinning against each other make every forward several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _quick_sweep(monkeypatch):
    monkeypatch.setattr(ct, "SWEEP_RUNS", 1)
    monkeypatch.setattr(ct, "SWEEP_WARMUP", 0)


@pytest.fixture(scope="module")
def image_compare():
    return ct.compare("image", CAT, None, "dinov2-small", "tome", 0.5, "evit", 0.75, layer=12)


def test_compare_image_and_rerender_layer(image_compare):
    out = image_compare
    session = out.session
    assert session.a.trace.token_counts()[-1] == 129 and session.b.trace.token_counts()[-1] == 65
    assert isinstance(out.overlay_a, Image.Image) and isinstance(out.diff_image, Image.Image) and out.tokens_a is None
    assert "Tokens: A 129, B 65" in out.diff_summary
    assert [d.name for d in out.counts.data] == ["A: tome @ 0.5", "B: evit @ 0.75"]
    rows = out.table
    assert [r[1] for r in rows] == [129, 65] and all(0.5 < r[2] <= 1.0 + 1e-6 for r in rows)
    assert "speed-up" in out.details_a and "Cosine" in out.details_b
    early = ct.render_compare_layer(1, session)  # from the stored traces
    assert "After layer 1" in early.diff_summary
    assert not np.array_equal(np.asarray(early.overlay_a), np.asarray(out.overlay_a))
    assert ct.render_compare_layer(99, session).diff_summary.startswith("**After layer 12")  # clamped


def test_same_setting_twice_has_no_difference(image_compare):
    previous = image_compare.session  # its unmerged reference is reused (same input)
    out = ct.compare("image", CAT, None, "dinov2-small", "tome", 0.5, "tome", 0.5, layer=12, session=previous)
    assert out.session.a.reference.key == previous.a.reference.key
    assert "0% of the input tokens" in out.diff_summary


def test_compare_text():
    out = ct.compare("text", None, PROMPT, "minilm", "tome", 0.5, "subword", 0.0, layer=6)
    assert out.overlay_a is None and out.tokens_a and out.diff_tokens
    assert len(out.diff_tokens) == out.session.a.trace.num_input_tokens
    assert any(score for _, score in out.diff_tokens)  # tome merged tokens that subword (ratio 0) did not


def test_sweep_image_skips_text_only_methods():
    fig, table, path = ct.run_sweep("image", CAT, None, "dinov2-small", ["tome", "random", "subword"], "0.5, 0")
    rows = table
    assert [(r[0], r[1]) for r in rows] == [("tome", 0.0), ("tome", 0.5), ("random", 0.0), ("random", 0.5)]
    assert rows[1][2] == 129 and rows[0][3] == pytest.approx(1.0, abs=1e-5)
    header = Path(path).read_text().splitlines()[0]
    assert header.startswith("input,method,ratio") and len(Path(path).read_text().splitlines()) == 5
    assert len(fig.data) == 4  # two methods × (fidelity, speed-up)


def test_sweep_text():
    _, table, _ = ct.run_sweep("text", None, PROMPT, "minilm", ["tome", "subword"], "0.5")
    assert {r[0] for r in table} == {"tome", "subword"}


@pytest.mark.parametrize("call, message", [
    (lambda: ct.compare("image", None, None, "dinov2-small"), "no image"),
    (lambda: ct.compare("text", None, "  ", "minilm"), "prompt is empty"),
    (lambda: ct.compare("image", CAT, None, "minilm"), "text model"),
    (lambda: ct.compare("image", CAT, None, "dinov2-small", ratio_a=2.0), "between 0 and"),
    (lambda: ct.run_sweep("image", CAT, None, "dinov2-small", ["tome"], "0, half"), "not a number"),
    (lambda: ct.run_sweep("image", CAT, None, "dinov2-small", [], "0.5"), "no method"),
    (lambda: ct.run_sweep("image", CAT, None, "dinov2-small", ["subword"], "0.5"), "no method left"),
    (lambda: ct.run_sweep("text", None, PROMPT, "dinov2-small", ["tome"], "0.5"), "image model"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(gr.Error, match=message):
        call()


def test_parse_ratios():
    assert ct.parse_ratios("0.5, 0;0.25 0.5") == [0.0, 0.25, 0.5]
    with pytest.raises(ValueError, match="between 0 and"):
        ct.parse_ratios("0.99")


def test_client_compare_layer_sweep(client, monkeypatch):
    out = client.predict(kind="image", image=handle_file(CAT), prompt="", model="dinov2-small", method_a="tome",
                         ratio_a=0.5, method_b="random", ratio_b=0.5, layer=12, api_name="/compare")
    assert Image.open(out[API_FIELDS.index("diff_image")]).size[0] > 50 and "After layer 12" in out[API_FIELDS.index("diff_summary")]
    layer = client.predict(layer=2, api_name="/render_compare_layer")
    assert "After layer 2" in layer[-1]
    fig, table, csv = client.predict(kind="image", image=handle_file(CAT), prompt="", model="dinov2-small",
                                     methods=["tome"], ratios="0, 0.5", api_name="/sweep")
    assert len(table["data"]) == 2 and Path(csv).read_text().startswith("input,method")
    with pytest.raises(AppError, match="no image"):
        client.predict(kind="image", image=None, prompt="", model="dinov2-small", api_name="/compare")
    assert client.predict(layer=3, api_name="/render_compare_layer")  # still serving
