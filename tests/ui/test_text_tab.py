"""The Text tab's handlers, called directly (no server, no browser), on the embedded MiniLM."""
from __future__ import annotations

import gradio as gr
import pytest

from tomviz.render.charts import SIZE
from tomviz.ui import text_tab

pytestmark = pytest.mark.slow  # the embedded dinov2-small / minilm

PROMPT = "The cat sat on the mat, and the dog sat on the log next to the cat."


@pytest.fixture(scope="module")
def first():
    return text_tab.inspect_text(PROMPT, ratio=0.5, model="minilm", method="tome", layer=3)


def test_inspect_text_fills_every_output(first):
    trace = first.session.trace
    counts = trace.token_counts()
    assert first.layer.maximum == trace.num_layers == 6 and first.layer.value == 3
    assert counts[-1] < counts[0] and first.counts.size == first.gflops.size == SIZE  # pictures, not plots
    words = "".join(piece for piece, _ in first.tokens).split()
    assert words == ["[CLS]", *PROMPT.lower().split(), "[SEP]"]  # word pieces join into the prompt's words
    rows, sizes = first.table.value["data"], trace.sizes(2)
    assert len(rows) == len(sizes) and rows[0][1] == sizes.max()  # one row per group, the largest first
    assert sorted(row[1] for row in rows) == sorted(sizes.astype(int).tolist())
    assert first.summary["token_counts"] == counts and "cosine" in first.fidelity.lower()
    assert "ms" in first.speed


def test_layer_change_and_token_click(first):
    views = text_tab.render_text_layer(6, first.session, None)
    assert len(views.table.value["data"]) == len(first.session.trace.sizes(5))
    assert text_tab.render_text_layer(6, None, None) == text_tab.LayerViews(None, None, None)
    trace = first.session.trace
    members = (trace.groups(5) == trace.groups(5)[3]).nonzero()[0]
    selection = text_tab.selection_views(6, first.session, 3)
    assert selection.selected == 3 and "token" in selection.lineage
    coloured = [i for i, (_, label) in enumerate(selection.tokens) if label is not None]
    assert len(coloured) == len(members)  # only the clicked token's group is coloured
    cleared = text_tab.clear_selection(6, first.session)
    assert cleared.selected is None and cleared.lineage == text_tab.LINEAGE_HINT
    after = text_tab.after_run(first.session, 10_000, "The cat sat", "minilm", "tome", "constant", 0.5, 6)
    assert after.selected is None and after.lineage == text_tab.LINEAGE_HINT  # beyond the prompt: dropped
    assert "tab=text" in after.link and "prompt=The+cat+sat" in after.link and "layer=6" in after.link


def test_empty_prompt_is_a_clear_error():
    with pytest.raises(gr.Error, match="prompt is empty"):
        text_tab.inspect_text("   ")


def test_tab_builds_with_its_endpoints():
    with gr.Blocks() as demo:
        text_tab.build_text_tab(demo)
    names = {dep.api_name for dep in demo.fns.values()}
    assert {"inspect_text", "render_text_layer", "text_downloads", "open_page_text", "pick_example_text"} <= names
