"""The life-cycle the Image and Text tabs share, on stand-in sessions (no model): one rule per step, each
tab supplying only what differs (its TabKind)."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

from tomviz.ui import image_tab, lifecycle, text_tab
from tomviz.ui.share import View

SKIP = type(gr.skip())


def _session(num_protected: int = 1, num_input_tokens: int = 5):
    return SimpleNamespace(trace=SimpleNamespace(num_protected=num_protected, num_input_tokens=num_input_tokens))


@pytest.mark.parametrize("kind, token, expected", [
    (image_tab.KIND, 0, None),  # CLS is not on the picture
    (image_tab.KIND, 1, 1), (image_tab.KIND, 4, 4),
    (image_tab.KIND, 5, None),  # beyond the input (a new photo may have fewer patches)
    (text_tab.KIND, 0, 0),  # [CLS] is a clickable token
    (text_tab.KIND, 4, 4), (text_tab.KIND, 5, None), (text_tab.KIND, None, None),
])
def test_valid_token_keeps_what_a_click_may_select(kind, token, expected):
    assert lifecycle.valid_token(kind, _session(), token) == expected
    assert lifecycle.valid_token(kind, None, token) is None


def test_after_run_drops_a_token_the_new_trace_lacks_and_keeps_the_link():
    for kind, after in ((image_tab.KIND, image_tab.AfterRun), (text_tab.KIND, text_tab.AfterRun)):
        out = lifecycle.after_run(kind, after, _session(num_input_tokens=3), 7, "?tab=x", draw=lambda *a: 1 / 0)
        assert (out.selected, out.lineage, out.link) == (None, kind.hint, "?tab=x")  # nothing drawn for no token
        assert lifecycle.after_run(kind, after, None, 1, "?q").lineage == kind.hint
    assert image_tab.AfterRun._fields == ("selected", "lineage", "link")  # the Image tab's run drew the pictures
    assert image_tab.LINEAGE_HINT != text_tab.LINEAGE_HINT  # each tab says what to click


def test_after_run_redraws_what_draw_gives_and_skips_the_rest(monkeypatch):
    monkeypatch.setattr(lifecycle, "lineage_panel", lambda kind, session, token: f"lineage of {token}")
    after = lifecycle.after_run_type("Redrawn", [("tokens", object), ("table", object)])
    out = lifecycle.after_run(text_tab.KIND, after, _session(), 2, "?q", draw=lambda session, token: dict(tokens=token))
    assert out == after(selected=2, tokens=2, table=out.table, lineage="lineage of 2", link="?q")
    assert isinstance(out.table, SKIP)  # a view ``draw`` does not give is left as it is


def test_a_link_to_the_other_tab_opens_on_this_tabs_defaults():
    image_link = View(tab="image", model="facebook/dinov2-small", method="pitome", schedule="decreasing", ratio=0.7,
                      layer=9, example="coffee.png")
    assert lifecycle.view_settings(image_tab.KIND, image_link) == ("facebook/dinov2-small", "pitome", "decreasing", 0.7, 9)
    assert lifecycle.view_settings(text_tab.KIND, View(tab="text")) == ("minilm", "tome", "constant", 0.5, 3)
    assert lifecycle.view_settings(image_tab.KIND, View()) == ("dinov2-small", "tome", "constant", 0.5, 6)
    opened = lifecycle.opened_view(text_tab.KIND, None, [])  # no request: an Image-tab view, so the defaults
    assert opened == View(tab="text")


def test_outputs_and_selections_are_declared_one_way():
    assert image_tab.ImageOutputs._fields == ("session", "overlay", "strip", "cluster", "heat", "counts", "speed",
                                              "gflops", "fidelity", "summary", "layer")
    assert text_tab.TextOutputs._fields == ("session", "tokens", "table", "attention", "counts", "speed", "gflops",
                                            "fidelity", "summary", "layer")
    assert image_tab.Selection._fields == ("selected", "overlay", "cluster", "strip", "lineage")
    assert text_tab.Selection._fields == ("selected", "tokens", "lineage")
    nothing = lifecycle.no_selection(text_tab.KIND, text_tab.Selection)
    assert nothing.selected is None and isinstance(nothing.tokens, SKIP) and nothing.lineage == text_tab.LINEAGE_HINT
    assert all(isinstance(value, SKIP) for value in lifecycle.unchanged(image_tab.Selection))
    assert text_tab.selection_views(3, None, 2) == nothing  # no result yet


def test_no_tab_imports_another_tab():
    import ast
    from pathlib import Path

    folder = Path(lifecycle.__file__).parent
    tabs = {path.stem for path in folder.glob("*_tab.py")}
    for path in folder.glob("*_tab.py"):
        imported = {node.module.rsplit(".", 1)[-1] for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tomviz.ui.")}
        imported |= {alias.name for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.ImportFrom) and node.module == "tomviz.ui" for alias in node.names}
        assert not imported & (tabs - {path.stem}), f"{path.name} imports {imported & tabs}"


def test_each_tab_of_a_page_is_its_own_visitor_for_the_grid():
    request = gr.Request(session_hash="page", client=SimpleNamespace(host="10.0.0.2"))
    image, text = lifecycle.visitor_of(request, "image"), lifecycle.visitor_of(request, "text")
    assert image != text and image.client == text.client == "10.0.0.2"  # one page's tabs keep a grid each
    assert lifecycle.visitor_of(None, "image") is None  # a handler called without a session keeps no grid
