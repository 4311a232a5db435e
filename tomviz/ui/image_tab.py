"""The Image tab: upload a photo, move the merge ratio, look at every layer.

Handlers are module-level functions (testable without a browser). The session's
:class:`~tomviz.ui.compute.Analysis` lives in ``gr.State``; the layer and opacity
sliders re-render from it without running a model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from tomviz.render.figures import cluster_map_figure, gflops_figure, token_count_figure
from tomviz.render.overlay import group_overlay, heatmap_overlay, small_multiples
from tomviz.render.text import fidelity_markdown, speed_markdown
from tomviz.scores.attention import cls_attention_grid
from tomviz.ui.common import IMAGE_MODELS, download_folder, layer_index, layer_slider, merge_controls, session_state, user_errors
from tomviz.ui.compute import Analysis, Settings, analyse

ASSETS = Path(__file__).resolve().parents[2] / "assets"
EXAMPLE_IMAGES = [str(p) for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg",
                                      "hubble_deep_field.jpg", "grace_hopper.jpg") if (p := ASSETS / name).exists()]


# --- pictures for one layer (pure: no gradio) ------------------------------------------
def attention_values(analysis: Analysis, layer: int) -> np.ndarray | None:
    """``[rows*cols]`` CLS attention inside ``layer`` (0-based) per patch: each entering token's
    attention shared equally among the input patches it holds (None when not traced)."""
    if analysis.trace.layers[layer].cls_attention is None:
        return None
    return cls_attention_grid(analysis.trace, layer, share=True).reshape(-1)


def layer_pictures(analysis: Analysis, layer: int, opacity: float) -> tuple[Image.Image, Any, Image.Image]:
    """Overlay, cluster map (plotly) and CLS-attention heatmap for ``layer`` (0-based)."""
    trace, image = analysis.trace, analysis.image
    grid, protected = trace.meta["patch_grid"], int(trace.meta.get("num_protected", 1))
    overlay = group_overlay(image, trace.groups(layer), grid, protected, opacity=opacity)
    values = attention_values(analysis, layer)
    heat = heatmap_overlay(image, values, grid) if values is not None else image
    return overlay, cluster_map_figure(trace, layer), heat


def layer_strip(analysis: Analysis, selected: int | None = None) -> Image.Image:
    trace = analysis.trace
    return small_multiples(
        analysis.image, [trace.groups(l) for l in range(trace.num_layers)], trace.meta["patch_grid"],
        int(trace.meta.get("num_protected", 1)), token_counts=trace.token_counts()[1:], selected=selected,
    )


# --- handlers ----------------------------------------------------------------------------
# overlay, strip, cluster map, heatmap, token counts, speed, GFLOPs, fidelity, summary
EMPTY_IMAGE_OUTPUTS = (None, None, None, None, None, "", None, "", None)


def inspect_image(image: str | None, ratio: float = 0.5, model: str = "dinov2-small", method: str = "tome",
                  schedule: str = "constant", prop_attn: bool = True, layer: float = 6, opacity: float = 0.8,
                  session: Analysis | None = None):
    """Run the model once on ``image`` and render every output. API: ``/inspect_image`` (image, ratio)."""
    if image is None:
        return (None, *EMPTY_IMAGE_OUTPUTS, gr.Slider())
    with user_errors("inspect this image"):
        settings = Settings(model=(model or "dinov2-small").strip(), method=method, ratio=ratio, mode=schedule,
                            prop_attn=bool(prop_attn))
        reference = session.reference if session is not None else None
        analysis = analyse(image, settings, reference, modality="image")
        for note in analysis.notes:
            gr.Warning(note)
        l = layer_index(layer, analysis.trace.num_layers)
        overlay, cluster, heat = layer_pictures(analysis, l, opacity)
        trace = analysis.trace
        return (
            analysis, overlay, layer_strip(analysis), cluster, heat, token_count_figure(trace),
            speed_markdown(analysis.speed), gflops_figure(analysis.speed.merged_gflops, analysis.speed.unmerged_gflops),
            fidelity_markdown(analysis.fidelity), analysis.summary(),
            gr.Slider(maximum=trace.num_layers, value=l + 1),
        )


def render_image_layer(layer: float = 6, opacity: float = 0.8, session: Analysis | None = None):
    """Re-render the layer views from the stored trace (no model). API: ``/render_image_layer``."""
    if session is None:
        return None, None, None
    with user_errors("show this layer"):
        return layer_pictures(session, layer_index(layer, session.trace.num_layers), opacity)


def image_downloads(layer: float = 6, opacity: float = 0.8, session: Analysis | None = None) -> list[str]:
    """Write the trace (.json, .npz) and the pictures (.png) of the current result; returns the paths."""
    if session is None:
        raise gr.Error("Nothing to download yet: inspect an image first.")
    with user_errors("prepare the downloads"):
        l = layer_index(layer, session.trace.num_layers)
        folder = download_folder()
        overlay, _, heat = layer_pictures(session, l, opacity)
        paths = [session.trace.save(folder / "trace.json"), session.trace.save(folder / "trace.npz")]
        for name, picture in ((f"overlay_layer{l + 1}.png", overlay), ("layers.png", layer_strip(session, l)),
                              (f"cls_attention_layer{l + 1}.png", heat)):
            picture.save(folder / name)
            paths.append(folder / name)
        return [str(p) for p in paths]


class ImageUpload(gr.Image):
    """gr.Image's front end (``is_template``) whose upload check (Gradio opens the file with PIL) turns
    unreadable files into a clear message instead of a raw PIL error with a temp path."""

    is_template = True

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Image.DecompressionBombError as err:
            raise gr.Error(f"The image is too large to open safely (a possible decompression bomb): {err}",
                           title="Cannot read the upload") from err
        except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
            raise gr.Error("This file cannot be read as an image. Upload a PNG, JPEG, WebP, GIF or similar photo "
                           f"({type(err).__name__}).", title="Cannot read the upload") from err


# --- layout and wiring -------------------------------------------------------------------
def build_image_tab(demo: gr.Blocks | None = None) -> None:
    """Lay out the Image tab inside the current ``gr.Tab`` and wire its events. With ``demo``, the first
    example photo is shown and inspected when a visitor opens the page (the model loads on first use)."""
    session = session_state()
    with gr.Row():
        with gr.Column(scale=4):
            image = ImageUpload(value=EXAMPLE_IMAGES[0] if demo is not None and EXAMPLE_IMAGES else None,
                                type="filepath", label="Image", sources=["upload", "clipboard", "webcam"], height=300)
            examples = gr.Examples(EXAMPLE_IMAGES, inputs=image, label="Example photos (see assets/ATTRIBUTION.md)")
            model, method, schedule, prop_attn, ratio = merge_controls("dinov2-small", IMAGE_MODELS)
            layer = layer_slider(12, 6)
            opacity = gr.Slider(0.0, 1.0, value=0.8, step=0.05, label="Overlay opacity")
            download = gr.Button("Download trace (.json, .npz) and pictures (.png)")
            files = gr.File(label="Downloads", file_count="multiple", interactive=False)
        with gr.Column(scale=7):
            with gr.Row():
                overlay = gr.Image(label="Groups after the selected layer", format="jpeg", elem_id="overlay",
                                   interactive=False, height=320)
                heat = gr.Image(label="CLS attention (spread through the groups)", format="jpeg", elem_id="attention",
                                interactive=False, height=320)
            cluster = gr.Plot(label="Cluster map (hover a patch)")
            strip = gr.Image(label="Every layer", format="jpeg", interactive=False, elem_id="layer-strip")
            with gr.Row():
                counts = gr.Plot(label="Token count")
                gflops = gr.Plot(label="GFLOPs")
            speed = gr.Markdown(label="Speed", elem_id="speed")
            fidelity = gr.Markdown(label="Fidelity", elem_id="fidelity")
            with gr.Accordion("Summary (JSON, as the API returns it)", open=False):
                summary = gr.JSON(label="Summary")

    main_outputs = [session, overlay, strip, cluster, heat, counts, speed, gflops, fidelity, summary, layer]
    main_inputs = [image, ratio, model, method, schedule, prop_attn, layer, opacity, session]
    examples.load_input_event.then(inspect_image, inputs=main_inputs, outputs=main_outputs, api_name="pick_example",
                                   api_visibility="private",
                                   concurrency_id="model", concurrency_limit=1)
    if demo is not None and EXAMPLE_IMAGES:
        demo.load(inspect_image, inputs=main_inputs, outputs=main_outputs, api_name="open_page", api_visibility="private",
                  concurrency_id="model", concurrency_limit=1)
    gr.on(
        # image.upload/clear, not image.change: change fires twice per upload (local preview, then server copy)
        [ratio.release, image.upload, image.clear, model.change, method.change, schedule.change, prop_attn.change],
        inspect_image, inputs=main_inputs, outputs=main_outputs, api_name="inspect_image", concurrency_id="model", concurrency_limit=1,
        trigger_mode="always_last",
    )
    gr.on(
        [layer.input, opacity.input], render_image_layer, inputs=[layer, opacity, session],
        outputs=[overlay, cluster, heat], api_name="render_image_layer", trigger_mode="always_last",
        show_progress="hidden", queue=False,  # a redraw from the stored trace: skip the queue
    )
    download.click(image_downloads, inputs=[layer, opacity, session], outputs=files, api_name="image_downloads")
