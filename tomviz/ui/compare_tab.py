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

from tomviz.analysis import Analysis, Settings, analyse
from tomviz.ratio_grid import foreground
from tomviz.merge.schedule import MAX_RATIO
from tomviz.render.compare import (comparison_figure, comparison_table, difference_overlay, difference_stats,
                                   difference_tokens, jaccard_distance)
from tomviz.render.figures import token_count_figure
from tomviz.render.overlay import group_overlay
from tomviz.render.text import fidelity_markdown, speed_markdown, token_highlights
from tomviz.ui.common import (DEFAULT_MODEL, EXAMPLE_IMAGES, EXAMPLE_PROMPTS, IMAGE_MODELS, MODALITIES, MODEL_HELP,
                              TEXT_MODELS, ImageUpload, PromptBox, input_of, layer_index, layer_slider, methods_for,
                              outputs_type, session_state, user_errors)
from tomviz.ui.examples import computed_once, own_copy
from tomviz.ui.sweep_section import SWEEP_METHODS, build_sweep_section

TABLE_HEADERS = ["setting", "tokens at the end", "cosine", "top-1 kept", "latency ms", "speed-up", "GFLOPs"]


@dataclass
class CompareSession:
    """Both results of one comparison (CPU, deep-copyable)."""

    a: Analysis
    b: Analysis
    modality: str  # "image" | "text"

    @property
    def names(self) -> tuple[str, str]:
        return tuple(f"{tag}: {r.settings.method} @ {r.settings.ratio:g}" for tag, r in (("A", self.a), ("B", self.b)))


# --- views of one layer (no model) -------------------------------------------------------
class LayerViews(NamedTuple):
    """What a layer change redraws, one field per output component (the other modality's views are None)."""

    overlay_a: Image.Image | None
    overlay_b: Image.Image | None
    diff_image: Image.Image | None  # Jaccard distance between A's and B's groups, over the photo
    tokens_a: list | None  # HighlightedText values
    tokens_b: list | None
    diff_tokens: list | None
    diff_summary: str


# What ``compare`` returns, one field per output component (wired in this order): the session, the
# :class:`LayerViews`, then the views a layer change leaves alone.
CompareOutputs = outputs_type("CompareOutputs", LayerViews, first=[("session", "CompareSession")], then=[
    ("counts", Any),  # plotly figure: token count per layer, A and B
    ("bars", Any),  # plotly figure: fidelity and speed
    ("table", "list[list[Any]]"),  # rows under TABLE_HEADERS
    ("details_a", str), ("details_b", str),
    ("layer", Any),  # gr.Slider update (maximum follows the model)
])


def compare_layer_views(session: CompareSession, layer: int) -> LayerViews:
    """The views after ``layer`` (0-based)."""
    ta, tb = session.a.trace, session.b.trace
    distance = jaccard_distance(ta.groups(layer), tb.groups(layer))  # [N0]
    stats = difference_stats(distance)
    summary = (f"**After layer {layer + 1}**: {stats['changed']:.0%} of the input tokens sit in groups that differ "
               f"between A and B (mean Jaccard distance {stats['mean']:.3f}; 0 = same group, pruned in one only = 1). "
               f"Tokens: A {ta.layers[layer].num_tokens}, B {tb.layers[layer].num_tokens}.")
    if session.modality == "image":
        grid, protected = ta.patch_grid, ta.num_protected
        image = session.a.image
        return LayerViews(group_overlay(image, ta.groups(layer), grid, protected),
                          group_overlay(image, tb.groups(layer), grid, protected),
                          difference_overlay(image, distance, grid, protected), None, None, None, summary)
    return LayerViews(None, None, None, token_highlights(ta, layer), token_highlights(tb, layer),
                      difference_tokens(ta.meta["tokens"], distance), summary)


# --- handlers ------------------------------------------------------------------------------
def compare(modality: str, image: str | None, prompt: str | None, model: str, method_a: str = "tome", ratio_a: float = 0.5,
            method_b: str = "pitome", ratio_b: float = 0.5, schedule: str = "constant", prop_attn: bool = True,
            layer: float = 6, session: CompareSession | None = None) -> CompareOutputs:
    """Run both settings on the input (the unmerged reference is shared). API: ``/compare``."""
    with user_errors("compare these settings"):
        x = input_of(modality, image, prompt)
        model = (model or DEFAULT_MODEL[modality]).strip()
        reference = session.a.reference if session is not None else None
        results = []
        for method, ratio in ((method_a, ratio_a), (method_b, ratio_b)):
            settings = Settings(model=model, method=method, ratio=ratio, schedule=schedule, prop_attn=bool(prop_attn))
            result = analyse(x, settings, reference, modality=modality)
            reference = result.reference  # B reuses A's unmerged run (and adds its timing to it)
            results.append(result)
        for note in dict.fromkeys(results[0].notes):
            gr.Warning(note)
        new = CompareSession(a=results[0], b=results[1], modality=modality)
        new.a.reference = new.b.reference  # keep one reference with every timing gathered so far
        names = new.names
        l = layer_index(layer, new.a.trace.num_layers)
        runs = (new.a, new.b)
        speeds = [r.speed for r in runs]
        figure = comparison_figure(
            names, [r.fidelity.cosine for r in runs], [s.merged_s * 1e3 for s in speeds],
            float(np.median([s.unmerged_s for s in speeds])) * 1e3, [s.merged_gflops_total for s in speeds],
            speeds[0].unmerged_gflops_total,
        )
        details = [f"### {name}\n{fidelity_markdown(r.fidelity)}\n\n{speed_markdown(r.speed)}"
                   for name, r in zip(names, (new.a, new.b))]
        return CompareOutputs(
            new, *compare_layer_views(new, l), counts=token_count_figure({names[0]: new.a.trace, names[1]: new.b.trace}),
            bars=figure, table=comparison_table(names, [r.fidelity for r in runs], speeds,
                                                           [r.trace.token_counts()[-1] for r in runs]), details_a=details[0], details_b=details[1],
            layer=gr.Slider(maximum=new.a.trace.num_layers, value=l + 1),
        )


@computed_once
def example_comparison() -> CompareOutputs:
    """The comparison the tab opens on: ToMe vs PiToMe at 0.5 on the first example photo (once per process)."""
    return compare("image", EXAMPLE_IMAGES[0], None, DEFAULT_MODEL["image"], "tome", 0.5, "pitome", 0.5)


def open_example() -> tuple:
    """Page load: the example photo and :func:`example_comparison` (the visitor's own copy of its session);
    every output left as it is without example photos."""
    if not EXAMPLE_IMAGES:
        return tuple(gr.skip() for _ in range(len(CompareOutputs._fields) + 1))
    with user_errors("show the example comparison"):
        out = example_comparison()
        return (EXAMPLE_IMAGES[0], *out._replace(session=own_copy(out.session)))


def render_compare_layer(layer: float = 6, session: CompareSession | None = None) -> LayerViews:
    """Re-render the layer views from the stored traces (no model). API: ``/render_compare_layer``."""
    if session is None:
        return LayerViews(None, None, None, None, None, None, "")
    with user_errors("show this layer"):
        return compare_layer_views(session, layer_index(layer, session.a.trace.num_layers))


def switch_modality(modality: str, method_a: str, method_b: str, sweep_methods: list[str] | None):
    """Show the input and views of ``modality``; model and method choices follow it (no model runs)."""
    image = modality == "image"
    choices = methods_for(modality)
    names = {name for _, name in choices}
    keep = lambda value, default: value if value in names else default  # noqa: E731
    return (
        gr.Column(visible=image), gr.Column(visible=not image),
        gr.Dropdown(choices=IMAGE_MODELS if image else TEXT_MODELS, value=DEFAULT_MODEL[modality]),
        gr.Dropdown(choices=choices, value=keep(method_a, "tome")), gr.Dropdown(choices=choices, value=keep(method_b, "pitome")),
        gr.CheckboxGroup(choices=choices, value=[m for m in (sweep_methods or []) if m in names] or SWEEP_METHODS),
        gr.Row(visible=image), gr.Column(visible=not image),
    )


# --- layout and wiring -------------------------------------------------------------------
def compare_tab_layout() -> dict[str, Any]:
    """Lay out the comparison's components inside the current ``gr.Tab``; returns them by name (no events)."""
    c: dict[str, Any] = dict(session=session_state())
    choices = methods_for("image")
    gr.Markdown("Two merge settings on the same input (difference map: for each token, the Jaccard distance between "
                "its group under A and under B), then a sweep of methods × ratios.")
    with gr.Row():
        with gr.Column(scale=4):
            c["modality"] = gr.Radio(list(MODALITIES), value="image", label="Input")
            with gr.Column(visible=True) as c["image_box"]:
                c["image"] = ImageUpload(value=None, type="filepath", label="Image", sources=["upload", "clipboard"],
                                         height=240)
                gr.Examples(EXAMPLE_IMAGES, inputs=c["image"], label="Example photos (see assets/ATTRIBUTION.md)")
            with gr.Column(visible=False) as c["text_box"]:
                c["prompt"] = PromptBox(EXAMPLE_PROMPTS[1], label="Prompt", lines=3)
                gr.Examples(EXAMPLE_PROMPTS, inputs=c["prompt"], label="Example prompts")
            c["model"] = gr.Dropdown(IMAGE_MODELS, value=DEFAULT_MODEL["image"], label="Model", allow_custom_value=True,
                                     info=MODEL_HELP)
            with gr.Row():
                for tag, method in (("a", "tome"), ("b", "pitome")):
                    with gr.Column(min_width=160):
                        c[f"method_{tag}"] = gr.Dropdown(choices, value=method, label=f"Method {tag.upper()}")
                        c[f"ratio_{tag}"] = gr.Slider(0.0, MAX_RATIO, value=0.5, step=0.05, label=f"Ratio {tag.upper()}")
            c["schedule"] = gr.Radio(["constant", "decreasing"], value="constant", label="Schedule")
            c["prop_attn"] = gr.Checkbox(value=True, label="Proportional attention")
            c["run"] = gr.Button("Compare", variant="primary")
            c["layer"] = layer_slider(12, 6)
        with gr.Column(scale=7):
            with gr.Row(visible=True) as c["image_views"]:
                c["overlay_a"] = gr.Image(label="A: groups", format="jpeg", interactive=False, height=280, elem_id="compare-a")
                c["overlay_b"] = gr.Image(label="B: groups", format="jpeg", interactive=False, height=280, elem_id="compare-b")
                c["diff_image"] = gr.Image(label="Difference (Jaccard distance, bright = different)", format="jpeg",
                                           interactive=False, height=280, elem_id="compare-diff")
            with gr.Column(visible=False) as c["text_views"]:
                c["tokens_a"] = gr.HighlightedText(label="A: tokens by group", combine_adjacent=False, show_legend=False)
                c["tokens_b"] = gr.HighlightedText(label="B: tokens by group", combine_adjacent=False, show_legend=False)
                c["diff_tokens"] = gr.HighlightedText(label="Difference (Jaccard distance per token; unmarked = same group)",
                                                      combine_adjacent=False, show_legend=False)
            c["diff_summary"] = gr.Markdown(elem_id="compare-summary")
            c["table"] = gr.Dataframe(headers=TABLE_HEADERS, label="Fidelity and speed", interactive=False)
            with gr.Row():
                c["counts"] = gr.Plot(label="Token count")
                c["bars"] = gr.Plot(label="Fidelity and speed")
            with gr.Accordion("Details (top-5 labels for classifiers, timings)", open=False):
                with gr.Row():
                    c["details_a"] = gr.Markdown()
                    c["details_b"] = gr.Markdown()
    return c


def build_compare_tab() -> None:
    """Lay out the Compare / Sweep tab inside the current ``gr.Tab`` and wire its events."""
    c = compare_tab_layout()
    c["sweep_methods"] = build_sweep_section(c)
    switched = ["image_box", "text_box", "model", "method_a", "method_b", "sweep_methods", "image_views", "text_views"]
    c["modality"].change(switch_modality, inputs=[c[name] for name in ("modality", "method_a", "method_b", "sweep_methods")],
                         outputs=[c[name] for name in switched], queue=False, show_progress="hidden")
    compare_inputs = ["modality", "image", "prompt", "model", "method_a", "ratio_a", "method_b", "ratio_b", "schedule",
                      "prop_attn", "layer", "session"]
    c["run"].click(foreground(compare), inputs=[c[name] for name in compare_inputs],
                   outputs=[c[name] for name in CompareOutputs._fields], api_name="compare",
                   concurrency_id="model", concurrency_limit=1)
    gr.on(None, open_example, None, [c["image"], *[c[name] for name in CompareOutputs._fields]],
          api_name="open_compare_example", api_visibility="private", queue=False)  # page load: the example pair
    c["layer"].input(render_compare_layer, inputs=[c["layer"], c["session"]], outputs=[c[name] for name in LayerViews._fields],
                     api_name="render_compare_layer", trigger_mode="always_last", show_progress="hidden",
                     queue=False)  # a redraw from the stored traces
