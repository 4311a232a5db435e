"""The Text tab: type a prompt, move the merge ratio, see which tokens merge at every layer."""
from __future__ import annotations


import gradio as gr

from tomviz.render.figures import gflops_figure, group_attention_figure, token_count_figure
from tomviz.render.text import fidelity_markdown, group_names, group_table, speed_markdown, token_highlights
from tomviz.ui.common import TEXT_MODELS, PromptBox, download_folder, layer_index, layer_slider, merge_controls, session_state, user_errors
from tomviz.ui.compute import Analysis, Settings, analyse

EXAMPLE_PROMPTS = [
    "Token merging speeds up transformers by averaging tokens that carry the same information.",
    "The cat sat on the mat, and the dog sat on the log next to the cat.",
    "Rear Admiral Grace Hopper wrote one of the first compilers and popularised the term debugging.",
    "Paris is the capital of France; Berlin is the capital of Germany; Rome is the capital of Italy.",
]
TABLE_HEADERS = ["group", "size", "tokens"]


def text_layer_views(analysis: Analysis, layer: int):
    """Highlighted tokens, group table and CLS attention per group for ``layer`` (0-based)."""
    trace = analysis.trace
    attention = trace.layers[layer].cls_attention  # [N_in] over the tokens entering the layer
    figure = None
    if attention is not None:  # CLS's attention to itself (and other protected tokens) is left out
        protected = int(trace.meta.get("num_protected", 1))
        names = group_names(trace, layer, entering=True)[protected:]
        figure = group_attention_figure(names, attention[protected:].tolist(), layer)
    return token_highlights(trace, layer), group_table(trace, layer), figure


def inspect_text(text: str | None, ratio: float = 0.5, model: str = "minilm", method: str = "tome",
                 schedule: str = "constant", prop_attn: bool = True, layer: float = 3,
                 session: Analysis | None = None):
    """Run the model once on ``text`` and render every output. API: ``/inspect_text`` (text, ratio)."""
    with user_errors("inspect this prompt"):
        if text is None or not str(text).strip():
            raise gr.Error("The prompt is empty: type some text or pick an example.", title="Cannot inspect this prompt")
        settings = Settings(model=(model or "minilm").strip(), method=method, ratio=ratio, mode=schedule,
                            prop_attn=bool(prop_attn))
        reference = session.reference if session is not None else None
        analysis = analyse(str(text), settings, reference, modality="text")
        for note in analysis.notes:
            gr.Warning(note, title="Prompt truncated")
        l = layer_index(layer, analysis.trace.num_layers)
        highlights, table, attention = text_layer_views(analysis, l)
        speed = analysis.speed
        return (
            analysis, highlights, gr.Dataframe(value=table, headers=TABLE_HEADERS), attention,
            token_count_figure(analysis.trace), speed_markdown(speed), gflops_figure(speed.merged_gflops, speed.unmerged_gflops),
            fidelity_markdown(analysis.fidelity), analysis.summary(),
            gr.Slider(maximum=analysis.trace.num_layers, value=l + 1),
        )


def render_text_layer(layer: float = 3, session: Analysis | None = None):
    """Re-render the layer views from the stored trace (no model). API: ``/render_text_layer``."""
    if session is None:
        return None, None, None
    with user_errors("show this layer"):
        highlights, table, attention = text_layer_views(session, layer_index(layer, session.trace.num_layers))
        return highlights, gr.Dataframe(value=table, headers=TABLE_HEADERS), attention


def text_downloads(session: Analysis | None = None) -> list[str]:
    """Write the trace as .json and .npz; returns the paths."""
    if session is None:
        raise gr.Error("Nothing to download yet: inspect a prompt first.")
    folder = download_folder()
    return [str(session.trace.save(folder / "trace.json")), str(session.trace.save(folder / "trace.npz"))]


def build_text_tab(demo: gr.Blocks | None = None) -> None:
    """Lay out the Text tab inside the current ``gr.Tab`` and wire its events. With ``demo``, the first
    example prompt is filled in and inspected when a visitor opens the page."""
    session = session_state()
    with gr.Row():
        with gr.Column(scale=4):
            prompt = PromptBox(label="Prompt", lines=4, placeholder="Type a sentence, then press Run or Shift+Enter",
                                value=EXAMPLE_PROMPTS[0] if demo is not None else None)
            run = gr.Button("Run", variant="primary")
            examples = gr.Examples(EXAMPLE_PROMPTS, inputs=prompt, label="Example prompts")
            model, method, schedule, prop_attn, ratio = merge_controls("minilm", TEXT_MODELS)
            layer = layer_slider(6, 3)
            download = gr.Button("Download trace (.json, .npz)")
            files = gr.File(label="Downloads", file_count="multiple", interactive=False)
        with gr.Column(scale=7):
            tokens = gr.HighlightedText(label="Tokens coloured by group (merged tokens share a colour)",
                                        combine_adjacent=False, show_legend=True, show_inline_category=False,
                                        elem_id="text-groups")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Groups after the selected layer", interactive=False)
            attention = gr.Plot(label="CLS attention per group")
            with gr.Row():
                counts = gr.Plot(label="Token count")
                gflops = gr.Plot(label="GFLOPs")
            speed = gr.Markdown(label="Speed")
            fidelity = gr.Markdown(label="Fidelity")
            with gr.Accordion("Summary (JSON, as the API returns it)", open=False):
                summary = gr.JSON(label="Summary")

    main_outputs = [session, tokens, table, attention, counts, speed, gflops, fidelity, summary, layer]
    main_inputs = [prompt, ratio, model, method, schedule, prop_attn, layer, session]
    gr.on(
        [run.click, prompt.submit, ratio.release, model.change, method.change, schedule.change, prop_attn.change],
        inspect_text, inputs=main_inputs, outputs=main_outputs, api_name="inspect_text",
        concurrency_id="model", concurrency_limit=1, trigger_mode="always_last",
    )
    if demo is not None:
        demo.load(inspect_text, inputs=main_inputs, outputs=main_outputs, api_name="open_page_text", api_visibility="private",
                  concurrency_id="model", concurrency_limit=1)
    examples.load_input_event.then(inspect_text, inputs=main_inputs, outputs=main_outputs, api_name="pick_example_text",
                                   api_visibility="private",
                                   concurrency_id="model", concurrency_limit=1)
    layer.input(render_text_layer, inputs=[layer, session], outputs=[tokens, table, attention],
                api_name="render_text_layer", trigger_mode="always_last", show_progress="hidden",
                queue=False)  # a redraw from the stored trace: skip the queue
    download.click(text_downloads, inputs=session, outputs=files, api_name="text_downloads")
