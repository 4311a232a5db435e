"""The Compare / Sweep tab: two merge settings side by side on one input, and a sweep of methods × ratios.

Handlers are module-level functions (testable without a browser). A comparison keeps both
:class:`~tomviz.analysis.Analysis` results in a :class:`CompareSession` (``gr.State``), so the layer
slider re-renders from the stored traces without running a model. Pictures come from
``tomviz/render`` (compare.py for the difference map, sweep.py for the sweep figure).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import gradio as gr
import numpy as np
from PIL import Image

import tomviz
from tomviz.merge import METHODS, check_methods
from tomviz.merge.schedule import MAX_RATIO, check_mode, check_ratio
from tomviz.render.compare import (comparison_figure, comparison_table, difference_overlay, difference_stats,
                                   difference_tokens, jaccard_distance)
from tomviz.render.figures import token_count_figure
from tomviz.render.overlay import group_overlay
from tomviz.render.sweep import sweep_figure
from tomviz.render.text import fidelity_markdown, speed_markdown, token_highlights
from tomviz.sweep import SweepRow, sweep, to_csv
from tomviz.ui.common import IMAGE_MODELS, MODEL_HELP, TEXT_MODELS, PromptBox, download_folder, layer_index, session_state, layer_slider, method_choices, user_errors
from tomviz.analysis import Analysis, Settings, analyse, check_modality
from tomviz.ui.image_tab import EXAMPLE_IMAGES, ImageUpload
from tomviz.ui.text_tab import EXAMPLE_PROMPTS

KINDS = ("image", "text")
DEFAULT_MODEL = {"image": "dinov2-small", "text": "minilm"}
SWEEP_METHODS = ["tome", "pitome", "evit", "random"]
SWEEP_RATIOS = "0, 0.25, 0.5, 0.75, 0.9"
SWEEP_RUNS, SWEEP_WARMUP = 3, 1  # timed / untimed forwards per setting (default sweep: ~15 s for dinov2-small on 1 CPU thread)
MAX_SWEEP_SETTINGS = 60  # methods × ratios refused beyond this (a sweep holds the model queue)
TABLE_HEADERS = ["setting", "tokens at the end", "cosine", "top-1 kept", "latency ms", "speed-up", "GFLOPs"]
SWEEP_HEADERS = ["method", "ratio", "tokens out", "cosine", "top-1 kept", "latency ms", "speed-up", "error"]


@dataclass
class CompareSession:
    """Both results of one comparison (CPU, deep-copyable)."""

    a: Analysis
    b: Analysis
    kind: str  # "image" | "text"

    @property
    def names(self) -> tuple[str, str]:
        return tuple(f"{tag}: {r.settings.method} @ {r.settings.ratio:g}" for tag, r in (("A", self.a), ("B", self.b)))


def methods_for(kind: str) -> list[tuple[str, str]]:
    """``(label, name)`` of the methods that run on ``kind`` inputs."""
    return [(label, name) for label, name in method_choices() if kind in METHODS[name].modalities]


def _input_of(kind: str, image: str | None, prompt: str | None) -> Any:
    if kind not in KINDS:
        raise ValueError(f"unknown input kind {kind!r}: use 'image' or 'text'")
    if kind == "image":
        if image is None:
            raise ValueError("no image: upload a photo or pick an example")
        return image
    if prompt is None or not str(prompt).strip():
        raise ValueError("the prompt is empty: type some text or pick an example")
    return str(prompt)


# --- views of one layer (no model) -------------------------------------------------------
class LayerViews(NamedTuple):
    """What a layer change redraws, one field per output component (the other input kind's views are None)."""

    overlay_a: Image.Image | None
    overlay_b: Image.Image | None
    diff_image: Image.Image | None  # Jaccard distance between A's and B's groups, over the photo
    tokens_a: list | None  # HighlightedText values
    tokens_b: list | None
    diff_tokens: list | None
    diff_summary: str


class CompareOutputs(NamedTuple):
    """What ``compare`` returns, one field per output component (wired in this order)."""

    session: CompareSession
    overlay_a: Image.Image | None
    overlay_b: Image.Image | None
    diff_image: Image.Image | None
    tokens_a: list | None
    tokens_b: list | None
    diff_tokens: list | None
    diff_summary: str
    counts: Any  # plotly figure: token count per layer, A and B
    bars: Any  # plotly figure: fidelity and speed
    table: list[list[Any]]
    details_a: str
    details_b: str
    layer: Any  # gr.Slider update (maximum follows the model)


def compare_layer_views(session: CompareSession, layer: int) -> LayerViews:
    """The views after ``layer`` (0-based)."""
    ta, tb = session.a.trace, session.b.trace
    distance = jaccard_distance(ta.groups(layer), tb.groups(layer))  # [N0]
    stats = difference_stats(distance)
    summary = (f"**After layer {layer + 1}**: {stats['changed']:.0%} of the input tokens sit in groups that differ "
               f"between A and B (mean Jaccard distance {stats['mean']:.3f}; 0 = same group, pruned in one only = 1). "
               f"Tokens: A {ta.layers[layer].num_tokens}, B {tb.layers[layer].num_tokens}.")
    if session.kind == "image":
        grid, protected = ta.patch_grid, ta.num_protected
        image = session.a.image
        return LayerViews(group_overlay(image, ta.groups(layer), grid, protected),
                          group_overlay(image, tb.groups(layer), grid, protected),
                          difference_overlay(image, distance, grid, protected), None, None, None, summary)
    return LayerViews(None, None, None, token_highlights(ta, layer), token_highlights(tb, layer),
                      difference_tokens(ta.meta["tokens"], distance), summary)


# --- handlers ------------------------------------------------------------------------------
def compare(kind: str, image: str | None, prompt: str | None, model: str, method_a: str = "tome", ratio_a: float = 0.5,
            method_b: str = "pitome", ratio_b: float = 0.5, schedule: str = "constant", prop_attn: bool = True,
            layer: float = 6, session: CompareSession | None = None) -> CompareOutputs:
    """Run both settings on the input (the unmerged reference is shared). API: ``/compare``."""
    with user_errors("compare these settings"):
        x = _input_of(kind, image, prompt)
        model = (model or DEFAULT_MODEL[kind]).strip()
        reference = session.a.reference if session is not None else None
        results = []
        for method, ratio in ((method_a, ratio_a), (method_b, ratio_b)):
            settings = Settings(model=model, method=method, ratio=ratio, mode=schedule, prop_attn=bool(prop_attn))
            result = analyse(x, settings, reference, modality=kind)
            reference = result.reference  # B reuses A's unmerged run (and adds its timing to it)
            results.append(result)
        for note in dict.fromkeys(results[0].notes):
            gr.Warning(note)
        new = CompareSession(a=results[0], b=results[1], kind=kind)
        new.a.reference = new.b.reference  # keep one reference with every timing gathered so far
        names = new.names
        l = layer_index(layer, new.a.trace.num_layers)
        summaries = [new.a.summary(), new.b.summary()]
        speeds = [new.a.speed, new.b.speed]
        figure = comparison_figure(
            names, [s["fidelity"]["cosine"] for s in summaries], [s.merged_s * 1e3 for s in speeds],
            float(np.median([s.unmerged_s for s in speeds])) * 1e3, [s.merged_gflops_total for s in speeds],
            speeds[0].unmerged_gflops_total,
        )
        details = [f"### {name}\n{fidelity_markdown(r.fidelity)}\n\n{speed_markdown(r.speed)}"
                   for name, r in zip(names, (new.a, new.b))]
        return CompareOutputs(
            new, *compare_layer_views(new, l), counts=token_count_figure({names[0]: new.a.trace, names[1]: new.b.trace}),
            bars=figure, table=comparison_table(names, summaries), details_a=details[0], details_b=details[1],
            layer=gr.Slider(maximum=new.a.trace.num_layers, value=l + 1),
        )


def render_compare_layer(layer: float = 6, session: CompareSession | None = None) -> LayerViews:
    """Re-render the layer views from the stored traces (no model). API: ``/render_compare_layer``."""
    if session is None:
        return LayerViews(None, None, None, None, None, None, "")
    with user_errors("show this layer"):
        return compare_layer_views(session, layer_index(layer, session.a.trace.num_layers))


def parse_ratios(text: str | None) -> list[float]:
    """``"0, 0.25, 0.5"`` → ``[0.0, 0.25, 0.5]`` (sorted, duplicates dropped); ValueError with a readable message."""
    parts = [p for p in str(text or "").replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise ValueError(f"no ratios: type numbers between 0 and {MAX_RATIO} separated by commas, e.g. {SWEEP_RATIOS}")
    ratios = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number: type ratios separated by commas, e.g. {SWEEP_RATIOS}") from None
        check_ratio(value)
        ratios.append(value)
    return sorted(set(ratios))


def sweep_rows_table(rows: list[SweepRow]) -> list[list[Any]]:
    """Rows for the table (``SWEEP_HEADERS``); missing numbers are blank."""
    def num(value: Any, scale: float = 1.0, digits: int = 4) -> Any:
        return "" if value is None else round(float(value) * scale, digits)

    out = []
    for r in rows:
        top1 = "" if r.top1_agree is None else ("yes" if r.top1_agree else "no")
        out.append([r.method, r.ratio, "" if r.tokens_out is None else int(r.tokens_out), num(r.cosine),
                    top1, num(r.latency_s, 1e3, 1), num(r.speedup, 1.0, 2), r.error or ""])
    return out


def run_sweep(kind: str, image: str | None, prompt: str | None, model: str, methods: list[str] | None,
              ratios: str = SWEEP_RATIOS, schedule: str = "constant", prop_attn: bool = True,
              progress: gr.Progress = gr.Progress(track_tqdm=True)):
    """Fidelity and measured speed of every chosen method × ratio on the input: (figure, table, CSV path).
    API: ``/sweep``."""
    with user_errors("run the sweep"):
        x = _input_of(kind, image, prompt)
        values = parse_ratios(ratios)
        methods = [m for m in (methods or []) if m]
        if not methods:
            raise ValueError("no method chosen: tick at least one")
        check_methods(methods)
        if len(methods) * len(values) > MAX_SWEEP_SETTINGS:
            raise ValueError(f"{len(methods)} methods × {len(values)} ratios = {len(methods) * len(values)} settings; "
                             f"at most {MAX_SWEEP_SETTINGS} per sweep")
        check_mode(schedule)
        name = (model or DEFAULT_MODEL[kind]).strip()
        progress(0.0, desc=f"Loading {name}")
        loaded = tomviz.load(name, untrusted=True)
        check_modality(name, loaded, kind, f"choose the {loaded.modality} input kind")
        skipped = [m for m in methods if kind not in METHODS[m].modalities]
        if skipped:
            gr.Warning(f"Skipped {', '.join(skipped)}: not for {kind} inputs.")
            methods = [m for m in methods if m not in skipped]
            if not methods:
                raise ValueError(f"no method left that runs on {kind} inputs")
        rows = sweep(loaded, x, methods, values, runs=SWEEP_RUNS, warmup=SWEEP_WARMUP, mode=schedule, prop_attn=bool(prop_attn),
                     progress=True)
        failed = [r for r in rows if r.error]
        if failed:
            gr.Warning(f"{len(failed)} of {len(rows)} settings could not run (see the error column).")
        path = to_csv(rows, download_folder() / "sweep.csv")
        return sweep_figure(rows), sweep_rows_table(rows), str(path)


def switch_kind(kind: str, method_a: str, method_b: str, sweep_methods: list[str] | None):
    """Show the input and views of ``kind``; model and method choices follow it (no model runs)."""
    image = kind == "image"
    choices = methods_for(kind)
    names = {name for _, name in choices}
    keep = lambda value, default: value if value in names else default  # noqa: E731
    return (
        gr.Column(visible=image), gr.Column(visible=not image),
        gr.Dropdown(choices=IMAGE_MODELS if image else TEXT_MODELS, value=DEFAULT_MODEL[kind]),
        gr.Dropdown(choices=choices, value=keep(method_a, "tome")), gr.Dropdown(choices=choices, value=keep(method_b, "pitome")),
        gr.CheckboxGroup(choices=choices, value=[m for m in (sweep_methods or []) if m in names] or SWEEP_METHODS),
        gr.Row(visible=image), gr.Column(visible=not image),
    )


# --- layout and wiring -------------------------------------------------------------------
def build_compare_tab() -> None:
    """Lay out the Compare / Sweep tab inside the current ``gr.Tab`` and wire its events."""
    session = session_state()
    choices = methods_for("image")
    gr.Markdown("Two merge settings on the same input (difference map: for each token, the Jaccard distance between "
                "its group under A and under B), then a sweep of methods × ratios.")
    with gr.Row():
        with gr.Column(scale=4):
            kind = gr.Radio(list(KINDS), value="image", label="Input kind")
            with gr.Column(visible=True) as image_box:
                image = ImageUpload(value=None, type="filepath", label="Image", sources=["upload", "clipboard"], height=240)
                gr.Examples(EXAMPLE_IMAGES, inputs=image, label="Example photos (see assets/ATTRIBUTION.md)")
            with gr.Column(visible=False) as text_box:
                prompt = PromptBox(EXAMPLE_PROMPTS[1], label="Prompt", lines=3)
                gr.Examples(EXAMPLE_PROMPTS, inputs=prompt, label="Example prompts")
            model = gr.Dropdown(IMAGE_MODELS, value="dinov2-small", label="Model", allow_custom_value=True, info=MODEL_HELP)
            with gr.Row():
                with gr.Column(min_width=160):
                    method_a = gr.Dropdown(choices, value="tome", label="Method A")
                    ratio_a = gr.Slider(0.0, MAX_RATIO, value=0.5, step=0.05, label="Ratio A")
                with gr.Column(min_width=160):
                    method_b = gr.Dropdown(choices, value="pitome", label="Method B")
                    ratio_b = gr.Slider(0.0, MAX_RATIO, value=0.5, step=0.05, label="Ratio B")
            schedule = gr.Radio(["constant", "decreasing"], value="constant", label="Schedule")
            prop_attn = gr.Checkbox(value=True, label="Proportional attention")
            run_btn = gr.Button("Compare", variant="primary")
            layer = layer_slider(12, 6)
        with gr.Column(scale=7):
            with gr.Row(visible=True) as image_views:
                overlay_a = gr.Image(label="A: groups", format="jpeg", interactive=False, height=280, elem_id="compare-a")
                overlay_b = gr.Image(label="B: groups", format="jpeg", interactive=False, height=280, elem_id="compare-b")
                diff_image = gr.Image(label="Difference (Jaccard distance, bright = different)", format="jpeg",
                                      interactive=False, height=280, elem_id="compare-diff")
            with gr.Column(visible=False) as text_views:
                tokens_a = gr.HighlightedText(label="A: tokens by group", combine_adjacent=False, show_legend=False)
                tokens_b = gr.HighlightedText(label="B: tokens by group", combine_adjacent=False, show_legend=False)
                diff_tokens = gr.HighlightedText(label="Difference (Jaccard distance per token; unmarked = same group)",
                                                 combine_adjacent=False, show_legend=False)
            diff_summary = gr.Markdown(elem_id="compare-summary")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Fidelity and speed", interactive=False)
            with gr.Row():
                counts = gr.Plot(label="Token count")
                bars = gr.Plot(label="Fidelity and speed")
            with gr.Accordion("Details (top-5 labels for classifiers, timings)", open=False):
                with gr.Row():
                    details_a = gr.Markdown()
                    details_b = gr.Markdown()

    gr.Markdown("## Sweep\nFidelity (cosine to the unmerged run; top-1 agreement for classifiers) and measured "
                "speed-up against the merge ratio, for every chosen method on the input above.")
    with gr.Row():
        with gr.Column(scale=4):
            sweep_methods = gr.CheckboxGroup(choices, value=SWEEP_METHODS, label="Methods")
            sweep_ratios = PromptBox(SWEEP_RATIOS, label="Ratios", info=f"Comma-separated, each between 0 and {MAX_RATIO}")
            sweep_btn = gr.Button("Run sweep", variant="primary")
            csv = gr.File(label="CSV", interactive=False)
        with gr.Column(scale=7):
            sweep_plot = gr.Plot(label="Fidelity and speed-up against ratio")
            sweep_table = gr.Dataframe(headers=SWEEP_HEADERS, label="Sweep", interactive=False)

    components = dict(session=session, overlay_a=overlay_a, overlay_b=overlay_b, diff_image=diff_image, tokens_a=tokens_a,
                      tokens_b=tokens_b, diff_tokens=diff_tokens, diff_summary=diff_summary, counts=counts, bars=bars,
                      table=table, details_a=details_a, details_b=details_b, layer=layer)
    layer_views = [components[name] for name in LayerViews._fields]
    kind.change(switch_kind, inputs=[kind, method_a, method_b, sweep_methods],
                outputs=[image_box, text_box, model, method_a, method_b, sweep_methods, image_views, text_views],
                queue=False, show_progress="hidden")
    run_btn.click(
        compare, inputs=[kind, image, prompt, model, method_a, ratio_a, method_b, ratio_b, schedule, prop_attn, layer, session],
        outputs=[components[name] for name in CompareOutputs._fields], api_name="compare",
        concurrency_id="model", concurrency_limit=1,
    )
    layer.input(render_compare_layer, inputs=[layer, session], outputs=layer_views, api_name="render_compare_layer",
                trigger_mode="always_last", show_progress="hidden", queue=False)  # a redraw from the stored traces
    sweep_btn.click(
        run_sweep, inputs=[kind, image, prompt, model, sweep_methods, sweep_ratios, schedule, prop_attn],
        outputs=[sweep_plot, sweep_table, csv], api_name="sweep", concurrency_id="model", concurrency_limit=1,
    )
