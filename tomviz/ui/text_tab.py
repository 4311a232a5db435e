"""The Text tab: type a prompt, move the merge ratio, see which tokens merge at every layer."""
from __future__ import annotations

from typing import Any, NamedTuple

import gradio as gr

from tomviz.lineage import group_lineage
from tomviz.render.figures import gflops_figure, group_attention_figure, token_count_figure
from tomviz.render.lineage import lineage_markdown
from tomviz.render.text import display_pieces, fidelity_markdown, group_names, group_table, speed_markdown, token_highlights
from tomviz.ui.common import (DEFAULT_MODEL, TEXT_MODELS, PromptBox, download_folder, layer_index, layer_slider, merge_controls, outputs_type,
                              session_state, user_errors)
from tomviz.analysis import Analysis, Settings, analyse
from tomviz.ui.share import COPY_JS, LINK_JS, request_view, view_query

EXAMPLE_PROMPTS = [
    "Token merging speeds up transformers by averaging tokens that carry the same information.",
    "The cat sat on the mat, and the dog sat on the log next to the cat.",
    "Rear Admiral Grace Hopper wrote one of the first compilers and popularised the term debugging.",
    "Paris is the capital of France; Berlin is the capital of Germany; Rome is the capital of Italy.",
]
TABLE_HEADERS = ["group", "size", "tokens"]


TOKEN_HINT = ("*Click a token: its group is highlighted, and this panel says when each member joined "
              "and with what similarity.*")
TOKENS_CAPTION = ("Tokens that share a colour are one merged group after the selected layer (the legend names "
                  "each group and its size); uncoloured tokens are still alone. After a click, only the clicked "
                  "token's group is coloured.")


class TextLayerViews(NamedTuple):
    """What a layer change redraws, one field per output component (wired in this order)."""

    tokens: list[tuple[str, str | None]] | None  # HighlightedText: (piece, group label or None)
    table: Any  # gr.Dataframe update: the groups after the layer (``TABLE_HEADERS``)
    attention: Any  # plotly CLS attention per group, or None when not traced


def text_layer_views(analysis: Analysis, layer: int, token: int | None = None) -> TextLayerViews:
    """Highlighted tokens, group table and CLS attention per group for ``layer`` (0-based); ``token``
    (a clicked input token) highlights its group only."""
    trace = analysis.trace
    attention = trace.layers[layer].cls_attention  # [N_in] over the tokens entering the layer
    figure = None
    if attention is not None:  # CLS's attention to itself (and other protected tokens) is left out
        protected = trace.num_protected
        names = group_names(trace, layer, entering=True)[protected:]
        figure = group_attention_figure(names, attention[protected:].tolist(), layer)
    return TextLayerViews(tokens=token_highlights(trace, layer, token),
                          table=gr.Dataframe(value=group_table(trace, layer), headers=TABLE_HEADERS), attention=figure)


def token_lineage(analysis: Analysis, token: int | None) -> str:
    """How the clicked token's group formed (a hint before any click)."""
    if token is None:
        return TOKEN_HINT
    names = [piece.strip() or piece for piece in display_pieces(analysis.trace.meta["tokens"])]
    return lineage_markdown(group_lineage(analysis.trace, token), [f"'{n}' ({i})" for i, n in enumerate(names)],
                            what="token")


def valid_token(session: Analysis | None, token: int | None) -> int | None:
    """``token`` if it indexes the session's input tokens, else None."""
    if session is None or token is None or not 0 <= int(token) < session.trace.num_input_tokens:
        return None
    return int(token)


# What ``inspect_text`` returns, one field per output component (wired in this order): the session, the
# :class:`TextLayerViews`, then the views a layer change leaves alone.
TextOutputs = outputs_type("TextOutputs", TextLayerViews, first=[("session", "Analysis")], then=[
    ("counts", Any),  # plotly token count per layer
    ("speed", str), ("gflops", Any),  # plotly GFLOPs per layer
    ("fidelity", str),
    ("summary", "dict[str, Any]"),  # the JSON digest the API returns
    ("layer", Any),  # gr.Slider update (maximum follows the model)
])


def inspect_text(text: str | None, ratio: float = 0.5, model: str = DEFAULT_MODEL["text"], method: str = "tome",
                 schedule: str = "constant", prop_attn: bool = True, layer: float = 3,
                 session: Analysis | None = None) -> TextOutputs:
    """Run the model once on ``text`` and render every output. API: ``/inspect_text`` (text, ratio)."""
    with user_errors("inspect this prompt"):
        if text is None or not str(text).strip():
            raise gr.Error("The prompt is empty: type some text or pick an example.", title="Cannot inspect this prompt")
        settings = Settings(model=(model or DEFAULT_MODEL["text"]).strip(), method=method, ratio=ratio, schedule=schedule,
                            prop_attn=bool(prop_attn))
        reference = session.reference if session is not None else None
        analysis = analyse(str(text), settings, reference, modality="text")
        for note in analysis.notes:
            gr.Warning(note, title="Prompt truncated")
        l = layer_index(layer, analysis.trace.num_layers)
        views, speed = text_layer_views(analysis, l), analysis.speed
        return TextOutputs(
            session=analysis, tokens=views.tokens, table=views.table, attention=views.attention,
            counts=token_count_figure(analysis.trace), speed=speed_markdown(speed),
            gflops=gflops_figure(speed.merged_gflops, speed.unmerged_gflops), fidelity=fidelity_markdown(analysis.fidelity),
            summary=analysis.summary(), layer=gr.Slider(maximum=analysis.trace.num_layers, value=l + 1),
        )


def render_text_layer(layer: float = 3, session: Analysis | None = None, selected: int | None = None) -> TextLayerViews:
    """Re-render the layer views from the stored trace (no model). API: ``/render_text_layer``."""
    if session is None:
        return TextLayerViews(None, None, None)
    with user_errors("show this layer"):
        return text_layer_views(session, layer_index(layer, session.trace.num_layers), valid_token(session, selected))


class TokenSelection(NamedTuple):
    """What a click on a token updates, one field per output component (wired in this order)."""

    selected: int | None  # the clicked input token (session state)
    tokens: Any  # the highlighted tokens, or gr.skip()
    lineage: str  # how the group formed (markdown), or the hint


def select_token(layer: float, session: Analysis | None, evt: gr.SelectData) -> TokenSelection:
    """A click on a token (``evt.index``: its position): select its group."""
    index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return token_views(layer, session, index if isinstance(index, int) else None)


def token_views(layer: float, session: Analysis | None, token: int | None) -> TokenSelection:
    """The selection views for ``token`` (None clears the selection)."""
    if session is None:
        return TokenSelection(None, gr.skip(), TOKEN_HINT)
    with user_errors("select this token"):
        token = valid_token(session, token)
        highlights = token_highlights(session.trace, layer_index(layer, session.trace.num_layers), token)
        return TokenSelection(token, highlights, token_lineage(session, token))


def clear_token(layer: float, session: Analysis | None) -> TokenSelection:
    return token_views(layer, session, None)


TextAfterRun = outputs_type("TextAfterRun", TokenSelection, then=[("link", str)])  # + the view's URL query


def after_text_run(session: Analysis | None, selected: int | None, prompt: str | None, model: str, method: str,
                   schedule: str, ratio: float, layer: float) -> TextAfterRun:
    """After a model run: keep the selection when it still indexes the prompt, else drop it (no redraw),
    and the link to the view (one event: see ``image_tab.after_image_run``)."""
    token = valid_token(session, selected)
    views = TokenSelection(None, gr.skip(), TOKEN_HINT) if token is None else token_views(layer, session, token)
    return TextAfterRun(*views, link=text_view_link(prompt, model, method, schedule, ratio, layer))


def open_text_view(request: gr.Request):
    """Page load: the prompt and settings from the link (tomviz/ui/share.py) when it is a Text-tab link."""
    view = request_view(request, [], tab="text")
    if view.tab != "text":  # an Image-tab link: this tab opens on its defaults
        return EXAMPLE_PROMPTS[0], DEFAULT_MODEL["text"], "tome", "constant", 0.5, 3
    return (view.prompt or EXAMPLE_PROMPTS[0], view.model or DEFAULT_MODEL["text"], view.method, view.schedule, view.ratio,
            view.layer or 3)


def text_view_link(prompt: str | None, model: str, method: str, schedule: str, ratio: float, layer: float) -> str:
    """The URL query of the current view, prompt included."""
    return view_query("text", model, method, schedule, ratio, layer, prompt=(prompt or "").strip() or None)


def text_downloads(session: Analysis | None = None) -> list[str]:
    """Write the trace as .json and .npz; returns the paths."""
    if session is None:
        raise gr.Error("Nothing to download yet: inspect a prompt first.")
    folder = download_folder()
    return [str(session.trace.save(folder / "trace.json")), str(session.trace.save(folder / "trace.npz"))]


def text_tab_layout(demo: gr.Blocks | None = None) -> dict[str, Any]:
    """Lay out the Text tab's components inside the current ``gr.Tab``; returns them by name (no events)."""
    c: dict[str, Any] = dict(session=session_state(), selected=session_state())  # selected: the clicked input token
    with gr.Row():
        with gr.Column(scale=4):
            c["prompt"] = PromptBox(label="Prompt", lines=4, placeholder="Type a sentence, then press Run or Shift+Enter",
                                    value=EXAMPLE_PROMPTS[0] if demo is not None else None)
            c["run"] = gr.Button("Run", variant="primary")
            c["examples"] = gr.Examples(EXAMPLE_PROMPTS, inputs=c["prompt"], label="Example prompts")
            c["model"], c["method"], c["schedule"], c["prop_attn"], c["ratio"] = merge_controls(DEFAULT_MODEL["text"], TEXT_MODELS)
            c["layer"] = layer_slider(6, 3)
            with gr.Row():
                c["link"] = gr.Textbox(label="Link to this view", elem_id="share-link-text", interactive=False, scale=4,
                                       info="Settings and prompt")
                c["copy"] = gr.Button("Copy link", scale=1)
            c["download"] = gr.Button("Download trace (.json, .npz)")
            c["files"] = gr.File(label="Downloads", file_count="multiple", interactive=False)
        with gr.Column(scale=7):
            c["tokens"] = gr.HighlightedText(label="Tokens coloured by group (click a token to follow its group)",
                                             combine_adjacent=False, show_legend=True, show_inline_category=False,
                                             elem_id="text-groups")
            gr.Markdown(TOKENS_CAPTION, elem_classes=["caption"])
            with gr.Row():
                c["lineage"] = gr.Markdown(TOKEN_HINT, elem_id="text-lineage")
                c["clear"] = gr.Button("Clear the selection", scale=0)
            c["table"] = gr.Dataframe(headers=TABLE_HEADERS, label="Groups after the selected layer", interactive=False)
            c["attention"] = gr.Plot(label="CLS attention per group")
            with gr.Row():
                c["counts"] = gr.Plot(label="Token count")
                c["gflops"] = gr.Plot(label="GFLOPs")
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
    session, selected, layer, link = c["session"], c["selected"], c["layer"], c["link"]
    main_outputs = [c[name] for name in TextOutputs._fields]
    main_inputs = [c[name] for name in ("prompt", "ratio", "model", "method", "schedule", "prop_attn", "layer", "session")]
    selection_outputs = [c[name] for name in TokenSelection._fields]
    link_inputs = [c[name] for name in ("prompt", "model", "method", "schedule", "ratio", "layer")]
    run_model = dict(inputs=main_inputs, outputs=main_outputs, concurrency_id="model", concurrency_limit=1)

    def after_run(event):  # the selection and the link follow the run (see image_tab.build_image_tab)
        return (event.then(after_text_run, [session, selected, *link_inputs],
                           [c[n] for n in TextAfterRun._fields], api_visibility="private", queue=False,
                           show_progress="hidden")
                .then(None, link, link, js=LINK_JS, queue=False, show_progress="hidden"))

    after_run(gr.on([c["run"].click, c["prompt"].submit, c["ratio"].release, c["model"].change, c["method"].change,
                     c["schedule"].change, c["prop_attn"].change],
                    inspect_text, api_name="inspect_text", trigger_mode="always_last", **run_model))
    if demo is not None:
        opened = demo.load(open_text_view, None, link_inputs, api_visibility="private", queue=False, show_progress="hidden")
        after_run(opened.then(inspect_text, api_name="open_page_text", api_visibility="private", **run_model))
    after_run(c["examples"].load_input_event.then(inspect_text, api_name="pick_example_text", api_visibility="private",
                                                  **run_model))
    layer.input(render_text_layer, inputs=[layer, session, selected],  # a redraw: skip the queue
                outputs=[c[name] for name in TextLayerViews._fields], api_name="render_text_layer",
                trigger_mode="always_last", show_progress="hidden", queue=False,
                ).then(None, [link, layer], link, js=LINK_JS, queue=False, show_progress="hidden")  # only the layer changed
    c["tokens"].select(select_token, [layer, session], selection_outputs, queue=False, show_progress="hidden")
    c["clear"].click(clear_token, [layer, session], selection_outputs, queue=False, show_progress="hidden")
    c["copy"].click(None, link, link, js=COPY_JS, queue=False)
    c["download"].click(text_downloads, inputs=session, outputs=c["files"], api_name="text_downloads")
