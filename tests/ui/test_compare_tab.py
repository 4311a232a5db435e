"""The Compare tab's handlers on an example photo and a prompt, and bad input."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from tomviz.ui import compare_tab as ct

pytestmark = pytest.mark.slow  # the embedded dinov2-small / minilm

CAT = str(Path(__file__).resolve().parents[2] / "assets" / "chelsea.png")
PROMPT = "The cat sat on the mat, and the dog sat on the log next to the cat."


@pytest.fixture(scope="module")
def image_compare():
    return ct.compare("image", CAT, None, "dinov2-small", "tome", 0.5, "evit", 0.75, layer=12)


def test_compare_image_and_rerender_layer(image_compare):
    out = image_compare
    session = out.session
    assert session.a.trace.token_counts()[-1] == 129 and session.b.trace.token_counts()[-1] == 65
    assert out.overlay_a.size == out.diff_image.size == session.a.image.size and out.tokens_a is None
    assert "Tokens: A 129, B 65" in out.diff_summary
    assert [d.name for d in out.counts.data] == ["A: tome @ 0.5", "B: evit @ 0.75"]
    rows = out.table
    assert [r[1] for r in rows] == [129, 65] and all(0.5 < r[2] <= 1.0 + 1e-6 for r in rows)
    assert "speed-up" in out.details_a and "Cosine" in out.details_b
    early = ct.render_compare_layer(1, session)  # from the stored traces
    assert "After layer 1" in early.diff_summary
    assert not np.array_equal(np.asarray(early.overlay_a), np.asarray(out.overlay_a))
    assert ct.render_compare_layer(99, session).diff_summary.startswith("**After layer 12")  # clamped
    assert ct.render_compare_layer(3, None) == ct.LayerViews(None, None, None, None, None, None, "")


def test_same_setting_twice_has_no_difference(image_compare):
    previous = image_compare.session  # its unmerged reference is reused (same input)
    out = ct.compare("image", CAT, None, "dinov2-small", "tome", 0.5, "tome", 0.5, layer=12, session=previous)
    assert out.session.a.reference.key == previous.a.reference.key
    assert "0% of the input tokens" in out.diff_summary


def test_compare_text():
    out = ct.compare("text", None, PROMPT, "minilm", "tome", 0.5, "subword", 0.0, layer=6)
    assert out.overlay_a is None and out.tokens_a and out.diff_tokens and out.session.modality == "text"
    assert len(out.diff_tokens) == out.session.a.trace.num_input_tokens
    assert any(score for _, score in out.diff_tokens)  # tome merged tokens that subword (ratio 0) did not


def test_switching_the_modality_switches_models_and_methods():
    to_text = ct.switch_modality("text", "pitome", "evit", ["tome", "evit", "subword"])
    image_box, text_box, model, method_a, method_b, sweep_methods, image_views, text_views = to_text
    assert (image_box.visible, text_box.visible, image_views.visible, text_views.visible) == (False, True, False, True)
    assert model.value == "minilm" and "subword" in {name for _, name in method_a.choices}
    assert (method_a.value, method_b.value, sweep_methods.value) == ("pitome", "evit", ["tome", "evit", "subword"])
    image_box, text_box, model, method_a, method_b, sweep_methods, *_ = ct.switch_modality("image", "subword", "evit",
                                                                                          ["tome", "subword"])
    assert (image_box.visible, text_box.visible, model.value) == (True, False, "dinov2-small")
    assert "subword" not in {name for _, name in method_a.choices}  # subword runs on text only
    assert (method_a.value, method_b.value, sweep_methods.value) == ("tome", "evit", ["tome"])


@pytest.mark.parametrize("call, message", [
    (lambda: ct.compare("image", None, None, "dinov2-small"), "no image"),
    (lambda: ct.compare("text", None, "  ", "minilm"), "prompt is empty"),
    (lambda: ct.compare("image", CAT, None, "minilm"), "text model"),
    (lambda: ct.compare("image", CAT, None, "dinov2-small", ratio_a=2.0), "between 0 and"),
    (lambda: ct.compare("audio", CAT, None, "dinov2-small"), "unknown input modality"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(gr.Error, match=message):
        call()


def test_tab_builds_with_its_endpoints():
    with gr.Blocks() as demo:
        ct.build_compare_tab()
    names = {dep.api_name for dep in demo.fns.values()}
    assert {"compare", "render_compare_layer", "sweep"} <= names
