"""The Image tab: upload a photo, move the merge ratio, look at every layer.

The tab follows the life-cycle of :mod:`tomviz.ui.lifecycle` (inspect → redraw a layer → select → after the
run → open from a link) and supplies what is its own: the pictures of one layer, clicks on pictures, the
example photos, downloads and the animation. The session's :class:`~tomviz.analysis.Analysis` lives in
``gr.State``; the layer and opacity sliders re-render from it without running a model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import numpy as np
from PIL import Image

from tomviz.analysis import Analysis
from tomviz.render.groups import (
    animation_frames, cluster_map_picture, cluster_picture, layer_strip_picture, map_layout, patch_groups, patch_name,
    save_animation, save_video, strip_layout, strip_token_at, token_at,
)
from tomviz.render.overlay import group_overlay, heatmap_overlay
from tomviz.scores.attention import cls_attention_grid
from tomviz.ui import lifecycle
from tomviz.ui.common import (ASSETS, DEFAULT_MODEL, EXAMPLE_IMAGES, IMAGE_MODELS, ImageUpload, download_folder,
                              layer_index, layer_slider, merge_controls, session_state, user_errors)
from tomviz.ui.lifecycle import QUIET, TabKind, valid_token
from tomviz.ui.pictures import Picture
from tomviz.ui.share import view_query

LINEAGE_HINT = ("*Click a patch in the overlay, the cluster map or the strip: its group is drawn in magenta in every "
                "layer, and this panel says when each member joined and with what similarity.*")
KIND = TabKind(tab="image", default_model=DEFAULT_MODEL["image"], default_layer=6, thing="patch", hint=LINEAGE_HINT,
               first_selectable=lambda trace: trace.num_protected,  # CLS and registers are not on the picture
               token_names=lambda trace: [patch_name(trace, t) for t in range(trace.num_input_tokens)])


# --- pictures for one layer (pure: no gradio) ------------------------------------------
def attention_values(analysis: Analysis, layer: int) -> np.ndarray | None:
    """``[rows*cols]`` CLS attention inside ``layer`` (0-based) per patch: each entering token's
    attention shared equally among the input patches it holds (None when not traced)."""
    if analysis.trace.layers[layer].cls_attention is None:
        return None
    return cls_attention_grid(analysis.trace, layer, share=True).reshape(-1)


def overlay_picture(analysis: Analysis, layer: int, opacity: float, token: int | None = None) -> Image.Image:
    """The groups after ``layer`` (0-based) over the photo; with ``token`` (a clicked input token) its
    group in magenta and the rest grey (that picture has no opacity)."""
    trace = analysis.trace
    if token is None:
        return group_overlay(analysis.image, trace.groups(layer), trace.patch_grid, trace.num_protected, opacity=opacity)
    return cluster_picture(analysis.image, patch_groups(trace, layer, token))


class LayerViews(NamedTuple):
    """What a layer change redraws, one field per output component (wired in this order)."""

    overlay: Image.Image | None  # the groups after the layer over the photo
    cluster: Image.Image | None  # the cluster map (the patch grid, groups coloured)
    heat: Image.Image | None  # CLS attention inside the layer


def layer_views(analysis: Analysis, layer: int, opacity: float, token: int | None = None) -> LayerViews:
    """Overlay, cluster map and CLS-attention heatmap for ``layer`` (0-based). With ``token`` (a clicked
    input token) the overlay and the map draw its group in magenta and the rest grey."""
    values = attention_values(analysis, layer)
    heat = heatmap_overlay(analysis.image, values, analysis.trace.patch_grid) if values is not None else analysis.image
    return LayerViews(overlay=overlay_picture(analysis, layer, opacity, token),
                      cluster=cluster_map_picture(analysis.trace, layer, token), heat=heat)


def layer_strip(analysis: Analysis, token: int | None = None, current: int | None = None) -> Image.Image:
    """Every layer's groups, 1380 px wide (readable at a 1400 px window); ``token``'s group highlighted."""
    return layer_strip_picture(analysis.image, analysis.trace, token=token, current=current)


CAPTIONS = {
    "overlay": "Each group filled with the mean colour of its patches and outlined in white (ToMe's picture); "
               "a patch still alone keeps its own colour. After a click: the clicked patch's group in magenta, the rest grey.",
    "attention": "CLS attention inside the layer, mean over heads, each token's share spread over the patches it holds: "
                 "dark = little, bright yellow = much (inferno, scaled from the minimum to the 99th percentile).",
    "cluster": "The patch grid without the photo. Light grey: a patch still alone. Colour: a merged group (two or "
               "more patches), keyed on its first patch so it keeps its colour from layer to layer; white lines "
               "outline the merged groups; near-black: a pruned patch. After a click: the selected group in magenta, "
               "the other merged groups darker grey. Click a patch to follow its group.",
}


# --- handlers ----------------------------------------------------------------------------
# What ``inspect_image`` returns, one field per output component (wired in this order).
ImageOutputs = lifecycle.run_outputs("ImageOutputs", [
    ("overlay", "Image.Image | None"),  # groups after the chosen layer
    ("strip", "Image.Image | None"),  # every layer
    ("cluster", "Image.Image | None"),  # the cluster map
    ("heat", "Image.Image | None"),  # CLS attention
])
EMPTY_IMAGE_OUTPUTS = ImageOutputs(None, None, None, None, None, None, "", None, "", None, None)


def inspect_image(image: str | None, ratio: float = 0.5, model: str = DEFAULT_MODEL["image"], method: str = "tome",
                  schedule: str = "constant", prop_attn: bool = True, layer: float = 6, opacity: float = 0.8,
                  session: Analysis | None = None, selected: int | None = None,
                  request: gr.Request | None = None) -> ImageOutputs:
    """Run the model once on ``image`` (or answer from the visitor's grid of ratios, see
    :func:`lifecycle.analyse_input`) and render every output; a clicked patch (``selected``, kept in the page's
    state) stays selected in the new pictures. API: ``/inspect_image`` (image, ratio)."""
    if image is None:
        return EMPTY_IMAGE_OUTPUTS._replace(layer=gr.Slider())
    with user_errors("inspect this image"):
        analysis = lifecycle.analyse_input(KIND, image, ratio, model, method, schedule, prop_attn, session, request)
        l = layer_index(layer, analysis.trace.num_layers)
        token = valid_token(KIND, analysis, selected)
        views = layer_views(analysis, l, opacity, token)
        return ImageOutputs(session=analysis, overlay=views.overlay, strip=layer_strip(analysis, token),
                            cluster=views.cluster, heat=views.heat, **lifecycle.run_views(analysis, l))


def render_image_layer(layer: float = 6, opacity: float = 0.8, session: Analysis | None = None,
                       selected: int | None = None) -> LayerViews:
    """Re-render the layer views from the stored trace (no model). API: ``/render_image_layer``."""
    if session is None:
        return LayerViews(None, None, None)
    with user_errors("show this layer"):
        return layer_views(session, layer_index(layer, session.trace.num_layers), opacity, valid_token(KIND, session, selected))


def render_image_opacity(layer: float = 6, opacity: float = 0.8, session: Analysis | None = None,
                         selected: int | None = None):
    """The opacity slider: a new overlay only (the map and the heatmap have no opacity, nor has the
    overlay of a selected group)."""
    token = valid_token(KIND, session, selected)
    if session is None or token is not None:
        return gr.skip()
    with user_errors("show this opacity"):
        return overlay_picture(session, layer_index(layer, session.trace.num_layers), opacity)


# What a click on a patch updates, one field per output component (wired in this order).
Selection = lifecycle.selection_type("ImageSelection", [
    ("overlay", Any),  # the clicked group in magenta, the rest grey
    ("cluster", Any),  # the cluster map with the group selected
    ("strip", Any),  # every layer, the group highlighted
])


def clicked_pixel(session: Analysis | None, evt: gr.SelectData | None) -> tuple[float, float] | None:
    """The clicked pixel ``(x, y)`` of a picture (``evt.index``), or None without a result or a pixel."""
    if session is None or evt is None or not isinstance(evt.index, (list, tuple)) or len(evt.index) != 2:
        return None
    return float(evt.index[0]), float(evt.index[1])


def select_patch(layer: float, opacity: float, session: Analysis | None, evt: gr.SelectData) -> Selection:
    """A click on the overlay: select the clicked patch's group."""
    if (pixel := clicked_pixel(session, evt)) is None:
        return lifecycle.no_selection(KIND, Selection)
    width, height = session.image.size  # the overlay is drawn at the stored photo's size
    return selection_views(layer, opacity, session, token_at(session.trace, pixel[0] / width, pixel[1] / height))


def select_on_map(layer: float, opacity: float, session: Analysis | None, evt: gr.SelectData) -> Selection:
    """A click on the cluster map: select the group of the patch under it (a click on its caption: nothing)."""
    if (pixel := clicked_pixel(session, evt)) is None:
        return lifecycle.no_selection(KIND, Selection)
    token = map_layout(session.trace).token_at(session.trace, *pixel)
    return lifecycle.unchanged(Selection) if token is None else selection_views(layer, opacity, session, token)


def select_in_strip(layer: float, opacity: float, session: Analysis | None, evt: gr.SelectData) -> Selection:
    """A click on the strip: select the group of the patch under it (in any layer's tile)."""
    if (pixel := clicked_pixel(session, evt)) is None:
        return lifecycle.no_selection(KIND, Selection)
    hit = strip_token_at(strip_layout(session.image.size, session.trace.num_layers), session.trace, *pixel)
    if hit is None:  # between tiles
        return lifecycle.unchanged(Selection)
    return selection_views(layer, opacity, session, hit[1])


def selection_views(layer: float, opacity: float, session: Analysis | None, token: int | None) -> Selection:
    """The selection views for ``token`` (None clears the selection)."""
    def draw(analysis: Analysis, token: int | None) -> dict[str, Any]:
        views = layer_views(analysis, layer_index(layer, analysis.trace.num_layers), opacity, token)
        return dict(overlay=views.overlay, cluster=views.cluster, strip=layer_strip(analysis, token))

    return lifecycle.select(KIND, Selection, session, token, draw)


def clear_selection(layer: float, opacity: float, session: Analysis | None) -> Selection:
    return selection_views(layer, opacity, session, None)


AfterRun = lifecycle.after_run_type("ImageAfterRun")  # what follows a model run: selected, lineage, link


def after_run(session: Analysis | None, selected: int | None, example: str | None, model: str, method: str,
              schedule: str, ratio: float, layer: float) -> AfterRun:
    """After a model run (which drew the selection, see :func:`inspect_image`; the pictures are not drawn
    twice): the selection and its lineage in the new trace, and the link to the view."""
    return lifecycle.after_run(KIND, AfterRun, session, selected, view_link(example, model, method, schedule, ratio, layer))


def image_downloads(layer: float = 6, opacity: float = 0.8, session: Analysis | None = None) -> list[str]:
    """Write the trace (.json, .npz) and the pictures (.png) of the current result; returns the paths (the
    page shows its Downloads box once it holds them)."""
    if session is None:
        raise gr.Error("Nothing to download yet: inspect an image first.")
    with user_errors("prepare the downloads"):
        l = layer_index(layer, session.trace.num_layers)
        folder = download_folder()
        views = layer_views(session, l, opacity)
        paths = [session.trace.save(folder / "trace.json"), session.trace.save(folder / "trace.npz")]
        for name, picture in ((f"overlay_layer{l + 1}.png", views.overlay), ("layers.png", layer_strip(session, current=l)),
                              (f"cls_attention_layer{l + 1}.png", views.heat)):
            picture.save(folder / name)
            paths.append(folder / name)
        return [str(p) for p in paths]


def image_animation(session: Analysis | None = None) -> list[str]:
    """Write the merge as an animated GIF and as an MP4 (H.264, PyAV), the same captioned frames in both (the
    input, then one frame per layer); returns ``[gif path, mp4 path]``."""
    if session is None:
        raise gr.Error("Nothing to animate yet: inspect an image first.")
    with user_errors("make the animation"):
        folder, stem = download_folder(), f"merge_{session.settings.method}_ratio{session.settings.ratio:g}"
        frames = animation_frames(session.image, session.trace)
        return [str(save_animation(frames, folder / f"{stem}.gif")), str(save_video(frames, folder / f"{stem}.mp4"))]


def open_view(request: gr.Request):
    """Page load: the settings from the link (see tomviz/ui/share.py) → image, controls, example name."""
    view = lifecycle.opened_view(KIND, request, EXAMPLE_IMAGES)
    example = view.example or (Path(EXAMPLE_IMAGES[0]).name if EXAMPLE_IMAGES else None)
    image = str(ASSETS / example) if example else None
    return (image, *lifecycle.view_settings(KIND, view), example)


def view_link(example: str | None, model: str, method: str, schedule: str, ratio: float, layer: float) -> str:
    """The URL query of the current view (an uploaded image is left out: the link opens the default photo).
    API: ``/image_view_link``."""
    return view_query("image", model, method, schedule, ratio, layer, example=example)


def example_picked(evt: gr.SelectData) -> str | None:
    """The file name of the example photo that was clicked."""
    index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return Path(EXAMPLE_IMAGES[int(index)]).name if 0 <= int(index) < len(EXAMPLE_IMAGES) else None


def forget_example() -> None:
    """An upload or a clear: the view no longer shows an example photo."""
    return None


# --- layout and wiring -------------------------------------------------------------------
def image_tab_layout(demo: gr.Blocks | None = None) -> dict[str, Any]:
    """Lay out the Image tab's components inside the current ``gr.Tab``; returns them by name (no events)."""
    c: dict[str, Any] = dict(session=session_state(), selected=session_state(),  # selected: the clicked input token
                             example_name=session_state())  # the example photo shown (file name), None after an upload
    with gr.Row():
        with gr.Column(scale=4):
            c["image"] = ImageUpload(value=EXAMPLE_IMAGES[0] if demo is not None and EXAMPLE_IMAGES else None,
                                     type="filepath", label="Image", sources=["upload", "clipboard", "webcam"], height=300)
            c["examples"] = gr.Examples(EXAMPLE_IMAGES, inputs=c["image"], label="Example photos (see assets/ATTRIBUTION.md)")
            c["model"], c["method"], c["schedule"], c["prop_attn"], c["ratio"] = merge_controls(KIND.default_model, IMAGE_MODELS)
            c["layer"] = layer_slider(12, 6)
            c["opacity"] = gr.Slider(0.0, 1.0, value=0.8, step=0.05, label="Overlay opacity")
            with gr.Row():
                c["link"] = gr.Textbox(label="Link to this view", elem_id="share-link", interactive=False, scale=4,
                                       info="Settings and example photo; an uploaded photo is never put in a link")
                c["copy"] = gr.Button("Copy link", elem_id="copy-link", scale=1)
            c["download"] = gr.Button("Download trace (.json, .npz) and pictures (.png)")
            c["files"] = gr.File(label="Downloads", file_count="multiple", interactive=False, visible=False)
            c["animate"] = gr.Button("Make the merge animation (GIF and MP4: the input, then one frame per layer)",
                                     elem_id="animate")
            c["animation"] = gr.File(label="Animation (GIF, MP4)", file_count="multiple", interactive=False,
                                     elem_id="animation-file", visible=False)
        with gr.Column(scale=7):
            with gr.Row():
                with gr.Column():
                    c["overlay"] = Picture(label="Groups after the selected layer (click a patch)", format="jpeg",
                                           elem_id="overlay", interactive=False, height=320)
                    gr.Markdown(CAPTIONS["overlay"], elem_classes=["caption"])
                with gr.Column():
                    c["heat"] = Picture(label="CLS attention (spread through the groups)", format="jpeg",
                                        elem_id="attention", interactive=False, height=320)
                    gr.Markdown(CAPTIONS["attention"], elem_classes=["caption"])
            c["cluster"] = Picture(label="Cluster map (click a patch)", format="png", elem_id="cluster-map",
                                   interactive=False, height=380)
            gr.Markdown(CAPTIONS["cluster"], elem_classes=["caption"])
            with gr.Row():
                c["counts"], c["gflops"] = lifecycle.run_charts(KIND.tab)
            c["speed"] = gr.Markdown(label="Speed", elem_id="speed")
            c["fidelity"] = gr.Markdown(label="Fidelity", elem_id="fidelity")
            with gr.Accordion("Summary (JSON, as the API returns it)", open=False):
                c["summary"] = gr.JSON(label="Summary")
    c["strip"] = Picture(label="Every layer (click a patch to follow its group)", format="jpeg", interactive=False,
                         elem_id="layer-strip")
    with gr.Row():
        c["lineage"] = gr.Markdown(LINEAGE_HINT, elem_id="lineage")
        c["clear"] = gr.Button("Clear the selection", scale=0)
    return c


def build_image_tab(demo: gr.Blocks | None = None) -> None:
    """Lay out the Image tab inside the current ``gr.Tab`` and wire its events. With ``demo``, the photo
    and settings named in the page's link (else the first example photo) are shown and inspected when a
    visitor opens the page (the model loads on first use)."""
    c = image_tab_layout(demo)
    image, settings = c["image"], ["model", "method", "schedule", "prop_attn"]
    link_inputs = ["example_name", "model", "method", "schedule", "ratio", "layer"]
    gr.api(view_link, api_name="image_view_link")  # API only: the link to a view (the page makes its own)
    c["examples"].dataset.select(example_picked, None, c["example_name"], **QUIET)  # before the runs that read it
    gr.on([image.upload, image.clear], forget_example, None, c["example_name"], **QUIET)
    lifecycle.wire_runs(
        c, inspect_image, ["image", "ratio", *settings, "layer", "opacity", "session", "selected"], ImageOutputs,
        # image.upload/clear, not image.change: change fires twice per upload (local preview, then server copy)
        [image.upload, image.clear, *[c[n].change for n in settings]],  # the ratio: wire_runs, from memory first
        ("inspect_image", "pick_example", "open_page"), after_run, AfterRun, link_inputs,
        demo if EXAMPLE_IMAGES else None, open_view, ["image", *link_inputs[1:], "example_name"])
    lifecycle.wire_layer(c, render_image_layer, ["layer", "opacity", "session", "selected"], LayerViews, "render_image_layer")
    c["opacity"].input(render_image_opacity, inputs=[c[n] for n in ("layer", "opacity", "session", "selected")],
                       outputs=c["overlay"], api_visibility="private", trigger_mode="always_last", **QUIET)
    lifecycle.wire_selection(c, Selection, [("overlay", select_patch), ("cluster", select_on_map), ("strip", select_in_strip)],
                             clear_selection, ["layer", "opacity", "session"], "clear_selection")
    lifecycle.wire_files(c["download"], image_downloads, [c[n] for n in ("layer", "opacity", "session")], c["files"],
                         "image_downloads")
    lifecycle.wire_files(c["animate"], image_animation, [c["session"]], c["animation"], "image_animation")
