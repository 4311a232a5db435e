"""The "Video" tab: drop in a clip (or pick an example), pick a temporal method and ratio, and see which
tokens merge across frames.

Layout first, event wiring last; handlers are module-level functions (testable without a browser). The
clip is checked from its header before any frame is decoded (:func:`tomviz.inputs.video.read_video`). The
visitor's ``gr.State`` keeps the sampled frames and the trace (for clicks); the encoder's outputs (~35 MB a
clip) stay in a small server-side cache of ``FEATURE_CACHE_SIZE`` clips under a lock, so changing the method,
the ratio or a knob reruns only the method (milliseconds) while the memory stays bounded whatever the number
of visitors.

The model box picks the embedded DINOv2-S/14 on each frame (offline) or a video encoder from the hub
(VideoMAE: ToMe and the other encoder methods over its space-time tokens, :mod:`tomviz.video_encoder`; the
strip then shows the groups after the chosen encoder layer, a tubelet's group on both of its frames). A
link to the view (:mod:`tomviz.ui.share`) carries the example clip's name and the settings, never an upload;
opening it restores them and runs.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
from PIL import Image

import tomviz
from tomviz.inputs.video import EXAMPLE_ATTRIBUTION, UPLOAD_LIMITS, VIDEO_SUFFIXES, Video, example_clips, read_video
from tomviz.merge import registry
from tomviz.merge.checks import MAX_RATIO
from tomviz.models.frames import FrameFeatures
from tomviz.models.hub import offline_reason
from tomviz.render.video import (STRIP_LEGEND, frame_counts_figure, frame_strip, layer_counts_figure, merge_video,
                                 strip_layout, tubelet_size)
from tomviz.ui.common import download_folder, session_state, user_errors
from tomviz.ui.server import HEAVY
from tomviz.ui.video_hbi_section import build_video_hbi_section
from tomviz.ui.share import COPY_JS, FRAME_RANGE, LINK_JS, NotThisTab, clip_query, request_view
from tomviz.trace import Trace
from tomviz.video import VideoResult
from tomviz.video_encoder import EncoderClipResult, inspect_encoder_clip

MODEL = "dinov2-small"  # the embedded DINOv2-S/14, offline
MODELS = [("DINOv2-S/14 on each frame (embedded, offline)", MODEL),
          ("VideoMAE-S, Kinetics-400 (Hugging Face hub)", "MCG-NJU/videomae-small-finetuned-kinetics"),
          ("VideoMAE-B, Kinetics-400 (Hugging Face hub)", "MCG-NJU/videomae-base-finetuned-kinetics")]
DEFAULT_EXAMPLE = "world.mp4"
FRAME_CHOICES = FRAME_RANGE  # the frames slider's bounds (a link's too)
SERVER_LIMITS = UPLOAD_LIMITS
KNOBS = {"holitom": ("tau",), "fastvid": ("tau", "segments")}  # which of the tab's knobs each method reads
FEATURE_CACHE_SIZE = 4  # clips whose encoder outputs are kept (server-wide, least recently used dropped first)
_FEATURES: "OrderedDict[tuple, FrameFeatures]" = OrderedDict()
_FEATURES_LOCK = threading.Lock()  # held only to read or change _FEATURES
LINEAGE_HINT = "*Click a token in the strip: its group is drawn in magenta in every frame it spans.*"
INTRO = ("Drop in a clip (mp4, webm, mov, gif; up to 25 MB) or pick an example. Every sampled frame goes through the "
         "embedded DINOv2-S/14; a temporal method then merges or drops tokens across frames (or pick a VideoMAE from the "
         "hub: it merges tubelets of 2 frames inside its encoder, layer by layer). DINOv2's CLS attention "
         "stands in for SigLIP's pooling-head attention (HoliTom, FastVID) and its final CLS token for FastVID's frame "
         "feature; the methods compare the middle block's tokens (6 of 12), where a moving object and a static "
         f"background differ (the last block makes them look alike). {EXAMPLE_ATTRIBUTION}")


def method_choices(model: str | None = MODEL) -> list[tuple[str, str]]:
    """The temporal methods for a per-frame model; the encoder methods for a video encoder (by its name)."""
    if is_video_encoder_name(model):
        return [(cls.label or name, name) for name, cls in registry.classes("encoder").items() if "image" in cls.modalities]
    labels = {"tome": "ToMe over all frames (baseline)", "random": "Random merging over all frames (baseline)"}
    return [(labels.get(name) or cls.label or name, name) for name, cls in registry.classes("clip").items()]


def is_video_encoder_name(model: str | None) -> bool:
    """Whether the model box names a video encoder (the method list follows; the run checks the real family)."""
    return "videomae" in (model or "").lower()


def pick_model(model: str | None, method: str | None):
    """A new model in the box: its methods, keeping ``method`` when it is one of them (else ToMe)."""
    names = [name for _, name in method_choices(model)]
    return gr.Dropdown(choices=method_choices(model), value=method if method in names else "tome")


def load_clip_model(model: str | None):
    """The embedded DINOv2 (offline), or a hub model; a plain message when the hub cannot be reached and the
    model is not cached here."""
    name = (model or MODEL).strip()
    if name != MODEL and (reason := offline_reason(name)) is not None:
        raise ValueError(f"{name} comes from the Hugging Face hub, which this server cannot reach ({reason}), and "
                         f"it is not cached here. The embedded DINOv2-S/14 ({MODEL}) works offline.")
    loaded = tomviz.load(name, untrusted=True)
    if loaded.modality not in ("image", "video"):
        raise ValueError(f"{name} is a {loaded.modality} model: pick an image model (run on each frame) or a video encoder")
    return loaded


@dataclass
class VideoSession:
    """What redraws and reruns need (per visitor, in gr.State)."""

    key: tuple  # (model, clip, frames)
    video: Video  # the sampled frames
    trace: Trace  # the last run's (a video encoder's: one record per layer)
    stage: int = -1  # the trace record the strip shows (a video encoder's layer slider, 0-based)


def cached_features(key: tuple) -> FrameFeatures | None:
    with _FEATURES_LOCK:
        if key in _FEATURES:
            _FEATURES.move_to_end(key)
        return _FEATURES.get(key)


def keep_features(key: tuple, features: FrameFeatures) -> None:
    with _FEATURES_LOCK:
        _FEATURES[key] = features
        _FEATURES.move_to_end(key)
        while len(_FEATURES) > FEATURE_CACHE_SIZE:
            _FEATURES.popitem(last=False)


class VideoOutputs(NamedTuple):
    """What ``inspect_clip`` returns, one field per output component (wired in this order)."""

    session: VideoSession
    strip: Image.Image  # the frame strip
    counts: Any  # plotly: tokens per frame
    text: str  # token counts, speed and fidelity (markdown)
    video: str  # path of the MP4 of the merge
    lineage: str
    layer: Any  # the encoder-layer slider (shown for a video encoder)
    link: str  # the URL query of the view (the browser makes it the full link)


def clip_source(upload: str | None, example: str | None) -> Path:
    """The uploaded file, else the chosen example clip; ValueError for neither or an unknown file type."""
    if upload:
        path = Path(upload)
        if path.suffix.lower() not in VIDEO_SUFFIXES + (".gif",):
            raise ValueError(f"{path.name}: not a clip this tab reads ({', '.join(VIDEO_SUFFIXES + ('.gif',))})")
        return path
    clips = example_clips()
    if not example or example not in clips:
        raise ValueError("upload a clip or pick an example")
    return clips[example]


def method_options(method: str, tau: float | None, segments: float | None) -> dict[str, Any]:
    """The tab's knobs that ``method`` reads."""
    values = {"tau": None if tau is None else float(tau), "segments": None if segments is None else int(segments)}
    return {name: values[name] for name in KNOBS.get(method, ()) if values[name] is not None}


def result_markdown(result: VideoResult) -> str:
    s = result.summary()
    frames, rows, cols = s["frame_grid"]
    speed = (f"encoder {s['encoder_ms_per_frame']:.1f} ms/frame (unchanged by the method); "
             f"{s['method']} itself {s['method_ms_per_frame']:.2f} ms/frame")
    if result.in_encoder:
        speed = (f"encoder with {s['method']} {s['method_ms_per_frame']:.1f} ms/frame, without "
                 f"{s['encoder_ms_per_frame']:.1f} ms/frame")
    segments = ", ".join(f"{a}–{b}" for a, b in s["segments"]) or "none"
    return (
        f"**Tokens** {s['token_counts'][0]} ({frames} frames × {rows}×{cols}) → **{s['token_counts'][-1]}** "
        f"({s['token_counts'][-1] / s['token_counts'][0]:.1%}); {s['groups_spanning_frames']} groups span several "
        f"frames, {s['dropped_tokens']} tokens dropped; segments: {segments}\n\n"
        f"**Speed** — {speed}; whatever consumes the tokens next sees "
        f"{s['token_counts'][-1] / s['token_counts'][0]:.1%} of them\n\n"
        f"**Fidelity** — cosine of the pooled embedding to the unreduced clip's: {s['fidelity_cosine']:.4f} "
        f"(size-weighted), {s['token_mean_cosine']:.4f} (each kept token once)"
    )


def inspect_clip(upload: str | None, example: str | None = DEFAULT_EXAMPLE, method: str = "holitom",
                 ratio: float = 0.9, frames: float = 16, tau: float | None = 0.8, segments: float | None = 8,
                 session: VideoSession | None = None, model: str = MODEL) -> VideoOutputs:
    """Run the temporal method (or a video encoder's merging) on the clip and draw the strip. API: ``/inspect_video``."""
    with user_errors("inspect this clip"):
        source = clip_source(upload, example)
        num_frames = int(min(max(FRAME_CHOICES[0], round(frames or 16)), FRAME_CHOICES[1]))
        loaded = load_clip_model(model)
        link = clip_query(model or MODEL, method, ratio, num_frames, tau, segments, None if upload else example)
        if loaded.modality == "video":
            return inspect_with_encoder(loaded, source, method, ratio, link)
        key = (loaded.name, str(source), num_frames)
        same_clip = session is not None and session.key == key
        video = session.video if same_clip else read_video(source, num_frames, SERVER_LIMITS)
        features = cached_features(key)
        result = tomviz.inspect(loaded, video, method=method, ratio=float(ratio),
                                method_options=method_options(method, tau, segments), features=features)
        path = merge_video(result.video.frames, result.trace, download_folder() / "merge.mp4")
        counts = frame_counts_figure(result.trace.tokens_per_frame(), result.trace.frame_grid[1] * result.trace.frame_grid[2])
        keep_features(key, result.features)
        return VideoOutputs(session=VideoSession(key, result.video, result.trace),
                            strip=frame_strip(result.video.frames, result.trace), counts=counts,
                            text=result_markdown(result), video=str(path), lineage=LINEAGE_HINT,
                            layer=layer_slider(result.trace.num_layers), link=link)


def layer_slider(records: int) -> Any:
    """The layer slider after a run: one position per trace record, on the last; shown when there are several
    (a method merging inside the per-frame encoder, TempMe: one record per encoder layer)."""
    return gr.Slider(1, max(records, 2), value=records, step=1, visible=records > 1)


def inspect_with_encoder(loaded: Any, source: Path, method: str, ratio: float, link: str) -> VideoOutputs:
    """A video encoder (VideoMAE): the clip at the model's frame count, merged inside the encoder."""
    if method not in [name for _, name in method_choices("videomae")]:
        raise ValueError(f"{loaded.name} merges inside its encoder: pick one of "
                         f"{', '.join(name for _, name in method_choices('videomae'))} (not {method})")
    video = read_video(source, int(loaded.backbone.config.num_frames), SERVER_LIMITS)
    result = inspect_encoder_clip(loaded, video, method=method, ratio=float(ratio))
    trace, layers = result.trace, result.trace.num_layers
    path = merge_video(result.video.frames, trace, download_folder() / "merge.mp4")
    return VideoOutputs(session=VideoSession((loaded.name, str(source), result.video.num_frames), result.video, trace),
                        strip=frame_strip(result.video.frames, trace), counts=layer_counts_figure(result.token_counts()),
                        text=encoder_markdown(result), video=str(path), lineage=LINEAGE_HINT,
                        layer=layer_slider(layers), link=link)


def encoder_markdown(result: EncoderClipResult) -> str:
    s = result.summary()
    steps, rows, cols = s["frame_grid"]
    counts, tubelet = s["token_counts"], s["tubelet_size"]
    top = f"; top class {s['top_labels'][0][0]} ({s['top_labels'][0][1]:.0%})" if s["top_labels"] else ""
    kept = "" if s["top1_agree"] is None else f"; top-1 class {'kept' if s['top1_agree'] else 'changed'}"
    return (
        f"**Tokens** {counts[0]} ({steps} tubelets of {tubelet} frames × {rows}×{cols}) → **{counts[-1]}** after "
        f"{len(counts) - 1} layers ({counts[-1] / counts[0]:.1%}), {s['method']} inside the encoder\n\n"
        f"**Speed** — {s['ms_per_clip']:.0f} ms per clip merged vs {s['base_ms_per_clip']:.0f} ms unmerged "
        f"({s['speedup']:.2f}×); {s['gflops']:.1f} vs {s['base_gflops']:.1f} GFLOPs "
        f"({s['base_gflops'] / s['gflops']:.2f}×)\n\n"
        f"**Fidelity** — cosine of the {'logits' if s['top1_agree'] is not None else 'pooled embedding'} to the "
        f"unmerged run's: {s['fidelity_cosine']:.4f}{kept}{top}"
    )


def stage_of(trace: Trace, layer: float | None) -> int:
    """The trace record the layer slider (1-based) names; the last one for a per-frame trace or no value."""
    if layer is None or trace.num_layers == 1:
        return trace.num_layers - 1
    return int(min(max(1, round(float(layer))), trace.num_layers)) - 1


def lineage_markdown(trace: Trace, token: int, stage: int = -1) -> str:
    """Where the clicked token went after ``stage``: its group's size, the frames it spans, dropped or kept
    (and, for a video encoder, its group's size after each layer)."""
    tubelet = tubelet_size(trace)
    step, row, col = trace.token_place(token)
    group = trace.groups(stage)
    where = f"frame {step}" if tubelet == 1 else f"tubelet {step}: frames {step * tubelet}–{step * tubelet + tubelet - 1}"
    name = f"token ({where}, row {row + 1}, col {col + 1})"
    if trace.num_layers > 1 and "stages" in trace.meta:
        name += f" after {trace.meta['stages'][stage]}"
    if group[token] < 0:
        return f"{name} was **dropped** by {trace.meta['method']}."
    members = (group == group[token]).nonzero()[0]
    spanned = sorted({trace.token_place(int(m))[0] * tubelet + k for m in members for k in range(tubelet)})
    frames = ", ".join(str(f) for f in spanned)
    text = (f"{name} is in a group of **{members.size}** tokens spanning **{len(spanned)}** frame(s): {frames}. "
            "The strip draws the group in magenta in every one of them.")
    if trace.num_layers > 1:
        sizes = [int(trace.sizes(l)[g]) if (g := trace.groups(l)[token]) >= 0 else 0 for l in range(trace.num_layers)]
        text += f" Its group's size after each layer: {' → '.join(map(str, sizes))}."
    return text


def select_token(session: VideoSession | None, evt: gr.SelectData) -> tuple[Any, str]:
    """A click on the strip: redraw it with the clicked token's group (after the layer shown) selected."""
    if session is None or evt is None or not isinstance(evt.index, (list, tuple)) or len(evt.index) != 2:
        return gr.skip(), LINEAGE_HINT
    frames, trace, stage = session.video.frames, session.trace, session.stage
    token = strip_layout(frames).token_at(trace, float(evt.index[0]), float(evt.index[1]))
    if token is None:
        return frame_strip(frames, trace, stage), LINEAGE_HINT
    return frame_strip(frames, trace, stage, token=token), lineage_markdown(trace, token, stage)


def show_layer(session: VideoSession | None, layer: float | None) -> tuple[Any, str, Any]:
    """The layer slider: the strip after that encoder layer, from the stored trace (no model); the session
    remembers the layer for clicks."""
    if session is None:
        return gr.skip(), LINEAGE_HINT, gr.skip()
    session = replace(session, stage=stage_of(session.trace, layer))
    return frame_strip(session.video.frames, session.trace, session.stage), LINEAGE_HINT, session


def open_link(request: gr.Request | None = None) -> tuple:
    """Page load: a Video-tab link's clip and settings (its problems shown as warnings). Any other page
    raises :class:`NotThisTab` (not shown), so nothing runs; a link without an example clip (the view of an
    upload) restores the settings and stops there too, after updating the components."""
    view = request_view(request, list(example_clips()), tab="video")
    if view.tab != "video":
        raise NotThisTab()
    asked = dict(request.query_params)  # what the link says and the checks kept (else the tab's defaults)
    model = view.model or MODEL
    method = view.method if asked.get("method") == view.method else ("tome" if is_video_encoder_name(model) else "holitom")
    ratio = view.ratio if "ratio" in asked and not any("ratio=" in p for p in view.problems) else 0.9
    return (view.example or DEFAULT_EXAMPLE, model, pick_model(model, method), ratio, view.frames or 16,
            0.8 if view.tau is None else view.tau, 8 if view.segments is None else view.segments)


def linked_example(request: gr.Request | None = None) -> None:
    """Between the page load and the run: stop (not shown) unless the link names an example clip."""
    params = dict(request.query_params) if request is not None and request.query_params is not None else {}
    if params.get("example") not in example_clips():
        raise NotThisTab()


def build_video_tab(demo: gr.Blocks | None = None) -> tuple[gr.File, gr.Dropdown]:
    """The tab's layout and events; returns its clip inputs (upload, example) for the question section. With
    ``demo`` (the app) a Video-tab link opens its view on page load."""
    session = session_state()
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=3):
            upload = gr.File(label="Clip", file_types=list(VIDEO_SUFFIXES) + [".gif"], type="filepath")
            example = gr.Dropdown(list(example_clips()), value=DEFAULT_EXAMPLE, label="Or an example clip")
            model = gr.Dropdown(MODELS, value=MODEL, label="Model", allow_custom_value=True, elem_id="video-model",
                                info="DINOv2 runs on each frame, offline; VideoMAE (hub) merges tubelets inside its encoder")
            method = gr.Dropdown(method_choices(), value="holitom", label="Method")
            ratio = gr.Slider(0.0, MAX_RATIO, value=0.9, step=0.05, label="Ratio",
                              info="Fraction of the clip's tokens removed (DyCoke: of each pruned frame; RLT: any > 0 runs its pixel rule)")
            frames = gr.Slider(*FRAME_CHOICES, value=16, step=1, label="Frames sampled",
                               info="Per-frame models; a video encoder takes its own frame count")
            tau = gr.Number(0.8, label="τ (HoliTom: static-token similarity; FastVID: segment cut below)")
            segments = gr.Number(8, precision=0, label="Segments c (FastVID: cut at the c − 1 least similar frame pairs)")
            run = gr.Button("Inspect clip", variant="primary", elem_id="video-run")
            with gr.Row():
                link = gr.Textbox(label="Link to this view", elem_id="share-link-video", interactive=False, scale=4,
                                  info="Settings and example clip; an uploaded clip is never put in a link")
                copy = gr.Button("Copy link", elem_id="copy-link-video", scale=1)
        with gr.Column(scale=8):
            strip = gr.Image(label="Frame strip", show_label=False, type="pil", interactive=False, format="png",
                             elem_id="video-strip")
            gr.Markdown(STRIP_LEGEND, elem_classes="caption")
            layer = gr.Slider(1, 12, value=12, step=1, label="Encoder layer (VideoMAE or TempMe: the groups after it)",
                              visible=False, elem_id="video-layer")
            lineage = gr.Markdown(LINEAGE_HINT, elem_id="video-lineage")
            text = gr.Markdown()
            with gr.Row():
                counts = gr.Plot(label="Tokens per frame")
                video = gr.Video(label="The merge (frames, then their groups)", interactive=False)

    inputs = [upload, example, method, ratio, frames, tau, segments, session, model]
    components = dict(session=session, strip=strip, counts=counts, text=text, video=video, lineage=lineage, layer=layer,
                      link=link)
    outputs = [components[name] for name in VideoOutputs._fields]
    quiet = dict(queue=False, show_progress="hidden")
    # up to 32 encoder forwards: a heavy event (its own slot, a time budget, stopped when the visitor leaves)
    gr.on([run.click, upload.upload, example.input, method.input, ratio.release], inspect_clip, inputs=inputs,
          outputs=outputs, api_name="inspect_video", trigger_mode="always_last", **HEAVY
          ).then(None, link, link, js=LINK_JS, **quiet)
    model.input(pick_model, [model, method], method, **quiet)
    strip.select(select_token, [session], [strip, lineage], queue=False)
    layer.input(show_layer, [session, layer], [strip, lineage, session], trigger_mode="always_last", **quiet)
    copy.click(None, link, link, js=COPY_JS, queue=False)
    if demo is not None:  # queued (a warning about the link reaches the page only from a queued event); no model
        (demo.load(open_link, None, [example, model, method, ratio, frames, tau, segments], api_visibility="private",
                   show_progress="hidden")
         .success(linked_example, None, None, **quiet)
         .success(inspect_clip, inputs=inputs, outputs=outputs, api_visibility="private", **HEAVY)
         .then(None, link, link, js=LINK_JS, **quiet))
    build_video_hbi_section(session)  # HBI: the sampled frames × a text's words (CLIP from the hub)
    return upload, example
