"""The Text tab: type a prompt, move the merge ratio, see which tokens merge at every layer.

The tab follows the life-cycle of :mod:`tomviz.ui.lifecycle` (inspect → redraw a layer → select → after the
run → open from a link) and supplies what is its own: the views of one layer (coloured tokens, the group
table, CLS attention per group), clicks on tokens and the download.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import gradio as gr

from tomviz.analysis import Analysis
from tomviz.render.figures import group_attention_figure
from tomviz.render.text import display_pieces, group_names, group_table, token_highlights
from tomviz.trace import Trace
from tomviz.ui import lifecycle
from tomviz.ui.common import (DEFAULT_MODEL, EXAMPLE_PROMPTS, TEXT_MODELS, PromptBox, download_folder, layer_index,
                              layer_slider, merge_controls, session_state, user_errors)
from tomviz.ui.lifecycle import TabKind, valid_token
from tomviz.ui.share import view_query

TABLE_HEADERS = ["group", "size", "tokens"]
LINEAGE_HINT = ("*Click a token: its group is highlighted, and this panel says when each member joined "
                "and with what similarity.*")
TOKENS_CAPTION = ("Tokens that share a colour are one merged group after the selected layer (the legend names "
                  "each group and its size); uncoloured tokens are still alone. After a click, only the clicked "
                  "token's group is coloured.")


def token_names(trace: Trace) -> list[str]:
    """Every input token as the lineage names it: ``'piece' (position)``."""
    names = [piece.strip() or piece for piece in display_pieces(trace.meta["tokens"])]
    return [f"'{n}' ({i})" for i, n in enumerate(names)]


KIND = TabKind(tab="text", default_model=DEFAULT_MODEL["text"], default_layer=3, thing="token", hint=LINEAGE_HINT,
               first_selectable=lambda trace: 0, token_names=token_names, note_title="Prompt truncated")


# --- views of one layer ------------------------------------------------------------------
class LayerViews(NamedTuple):
    """What a layer change redraws, one field per output component (wired in this order)."""

    tokens: list[tuple[str, str | None]] | None  # HighlightedText: (piece, group label or None)
    table: Any  # gr.Dataframe update: the groups after the layer (``TABLE_HEADERS``)
    attention: Any  # plotly CLS attention per group, or None when not traced


def layer_views(analysis: Analysis, layer: int, token: int | None = None) -> LayerViews:
    """Highlighted tokens, group table and CLS attention per group for ``layer`` (0-based); ``token``
    (a clicked input token) highlights its group only."""
    trace = analysis.trace
    attention = trace.layers[layer].cls_attention  # [N_in] over the tokens entering the layer
    figure = None
    if attention is not None:  # CLS's attention to itself (and other protected tokens) is left out
        protected = trace.num_protected
        names = group_names(trace, layer, entering=True)[protected:]
        figure = group_attention_figure(names, attention[protected:].tolist(), layer)
    return LayerViews(tokens=token_highlights(trace, layer, token),
                      table=gr.Dataframe(value=group_table(trace, layer), headers=TABLE_HEADERS), attention=figure)


# --- handlers ----------------------------------------------------------------------------
# What ``inspect_text`` returns, one field per output component (wired in this order).
TextOutputs = lifecycle.run_outputs("TextOutputs", LayerViews.__annotations__.items())


def inspect_text(text: str | None, ratio: float = 0.5, model: str = DEFAULT_MODEL["text"], method: str = "tome",
                 schedule: str = "constant", prop_attn: bool = True, layer: float = 3,
                 session: Analysis | None = None, selected: int | None = None,
                 request: gr.Request | None = None) -> TextOutputs:
    """Run the model once on ``text`` (or answer from the visitor's grid of ratios, see
    :func:`lifecycle.analyse_input`) and render every output; a clicked token (``selected``, kept in the
    page's state) stays selected when the new prompt still has it. API: ``/inspect_text`` (text, ratio)."""
    with user_errors("inspect this prompt"):
        if text is None or not str(text).strip():
            raise gr.Error("The prompt is empty: type some text or pick an example.", title="Cannot inspect this prompt")
        analysis = lifecycle.analyse_input(KIND, str(text), ratio, model, method, schedule, prop_attn, session, request)
        l = layer_index(layer, analysis.trace.num_layers)
        views = layer_views(analysis, l, valid_token(KIND, analysis, selected))
        return TextOutputs(analysis, *views, **lifecycle.run_views(analysis, l))


def render_text_layer(layer: float = 3, session: Analysis | None = None, selected: int | None = None) -> LayerViews:
    """Re-render the layer views from the stored trace (no model). API: ``/render_text_layer``."""
    if session is None:
        return LayerViews(None, None, None)
    with user_errors("show this layer"):
        return layer_views(session, layer_index(layer, session.trace.num_layers), valid_token(KIND, session, selected))


# What a click on a token updates, one field per output component (wired in this order).
Selection = lifecycle.selection_type("TextSelection", [("tokens", Any)])  # the highlighted tokens, or gr.skip()


def select_token(layer: float, session: Analysis | None, evt: gr.SelectData) -> Selection:
    """A click on a token (``evt.index``: its position): select its group."""
    index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return selection_views(layer, session, index if isinstance(index, int) else None)


def highlighted(layer: float) -> Callable[[Analysis, int | None], dict[str, Any]]:
    """What a selection redraws at the slider's ``layer``: the tokens, with only the selected group coloured."""
    def draw(analysis: Analysis, token: int | None) -> dict[str, Any]:
        return dict(tokens=token_highlights(analysis.trace, layer_index(layer, analysis.trace.num_layers), token))

    return draw


def selection_views(layer: float, session: Analysis | None, token: int | None) -> Selection:
    """The selection views for ``token`` (None clears the selection)."""
    return lifecycle.select(KIND, Selection, session, token, highlighted(layer))


def clear_selection(layer: float, session: Analysis | None) -> Selection:
    return selection_views(layer, session, None)


AfterRun = lifecycle.after_run_type("TextAfterRun", [("tokens", Any)])  # selected, tokens, lineage, link


def after_run(session: Analysis | None, selected: int | None, prompt: str | None, model: str, method: str,
              schedule: str, ratio: float, layer: float) -> AfterRun:
    """After a model run: the selection and its lineage in the new trace, the tokens with its group (cheap:
    a token clicked while the model ran shows too; else left as the run drew them), and the link to the view."""
    return lifecycle.after_run(KIND, AfterRun, session, selected, view_link(prompt, model, method, schedule, ratio, layer),
                               highlighted(layer))


def open_view(request: gr.Request):
    """Page load: the prompt and settings from the link (tomviz/ui/share.py) when it is a Text-tab link."""
    view = lifecycle.opened_view(KIND, request, [])
    return (view.prompt or EXAMPLE_PROMPTS[0], *lifecycle.view_settings(KIND, view))


def view_link(prompt: str | None, model: str, method: str, schedule: str, ratio: float, layer: float) -> str:
    """The URL query of the current view, prompt included."""
    return view_query("text", model, method, schedule, ratio, layer, prompt=(prompt or "").strip() or None)


def text_downloads(session: Analysis | None = None) -> list[str]:
    """Write the trace as .json and .npz; returns the paths."""
    if session is None:
        raise gr.Error("Nothing to download yet: inspect a prompt first.")
    folder = download_folder()
    return [str(session.trace.save(folder / "trace.json")), str(session.trace.save(folder / "trace.npz"))]


# --- layout and wiring -------------------------------------------------------------------
def text_tab_layout(demo: gr.Blocks | None = None) -> dict[str, Any]:
    """Lay out the Text tab's components inside the current ``gr.Tab``; returns them by name (no events)."""
    c: dict[str, Any] = dict(session=session_state(), selected=session_state())  # selected: the clicked input token
    with gr.Row():
        with gr.Column(scale=4):
            c["prompt"] = PromptBox(label="Prompt", lines=4, placeholder="Type a sentence, then press Run or Shift+Enter",
                                    value=EXAMPLE_PROMPTS[0] if demo is not None else None)
            c["run"] = gr.Button("Run", variant="primary")
            c["examples"] = gr.Examples(EXAMPLE_PROMPTS, inputs=c["prompt"], label="Example prompts")
            c["model"], c["method"], c["schedule"], c["prop_attn"], c["ratio"] = merge_controls(KIND.default_model, TEXT_MODELS)
            c["layer"] = layer_slider(6, 3)
            with gr.Row():
                c["link"] = gr.Textbox(label="Link to this view", elem_id="share-link-text", interactive=False, scale=4,
                                       info="Settings and prompt")
                c["copy"] = gr.Button("Copy link", scale=1)
            c["download"] = gr.Button("Download trace (.json, .npz)")
            c["files"] = gr.File(label="Downloads", file_count="multiple", interactive=False, visible=False)
        with gr.Column(scale=7):
            c["tokens"] = gr.HighlightedText(label="Tokens coloured by group (click a token to follow its group)",
                                             combine_adjacent=False, show_legend=True, show_inline_category=False,
                                             elem_id="text-groups")
            gr.Markdown(TOKENS_CAPTION, elem_classes=["caption"])
            with gr.Row():
                c["lineage"] = gr.Markdown(LINEAGE_HINT, elem_id="text-lineage")
                c["clear"] = gr.Button("Clear the selection", scale=0)
            c["table"] = gr.Dataframe(headers=TABLE_HEADERS, label="Groups after the selected layer", interactive=False,
                                      elem_id="text-table")
            c["attention"] = gr.Plot(label="CLS attention per group", elem_id="text-attention")
            with gr.Row():
                c["counts"], c["gflops"] = lifecycle.run_charts(KIND.tab)
            c["speed"] = gr.Markdown(label="Speed")
            c["fidelity"] = gr.Markdown(label="Fidelity")
            with gr.Accordion("Summary (JSON, as the API returns it)", open=False):
                c["summary"] = gr.JSON(label="Summary")
    return c


def build_text_tab(demo: gr.Blocks | None = None) -> None:
    """Lay out the Text tab inside the current ``gr.Tab`` and wire its events. With ``demo``, the prompt and
    settings of a Text-tab link (else the first example prompt) are filled in and inspected when a visitor
    opens the page."""
    c = text_tab_layout(demo)
    settings = ["model", "method", "schedule", "prop_attn"]
    link_inputs = ["prompt", "model", "method", "schedule", "ratio", "layer"]
    lifecycle.wire_runs(
        c, inspect_text, ["prompt", "ratio", *settings, "layer", "session", "selected"], TextOutputs,
        [c["run"].click, c["prompt"].submit, *[c[n].change for n in settings]],  # the ratio: wire_runs, from memory first
        ("inspect_text", "pick_example_text", "open_page_text"), after_run, AfterRun, link_inputs, demo, open_view,
        link_inputs)
    lifecycle.wire_layer(c, render_text_layer, ["layer", "session", "selected"], LayerViews, "render_text_layer")
    lifecycle.wire_selection(c, Selection, [("tokens", select_token)], clear_selection, ["layer", "session"],
                             "clear_token")  # the endpoint's name before the tabs shared one life-cycle
    lifecycle.wire_files(c["download"], text_downloads, [c["session"]], c["files"], "text_downloads")
