"""The "Video" tab: drop in a clip (or pick an example), pick a temporal method and ratio, and see which
tokens merge across frames.

Layout first, event wiring last; handlers are module-level functions (testable without a browser). The
clip is checked from its header before any frame is decoded (:func:`tomviz.inputs.video.read_video`). The
visitor's ``gr.State`` keeps the sampled frames and the trace (for clicks); the encoder's outputs (~35 MB a
clip) stay in a small server-side cache of ``FEATURE_CACHE_SIZE`` clips under a lock, so changing the method,
the ratio or a knob reruns only the method (milliseconds) while the memory stays bounded whatever the number
of visitors.
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
from tomviz.inputs.video import EXAMPLE_ATTRIBUTION, VIDEO_SUFFIXES, Video, VideoLimits, example_clips, read_video
from tomviz.merge import registry
from tomviz.merge.checks import MAX_RATIO
from tomviz.models.frames import FrameFeatures
from tomviz.render.video import STRIP_LEGEND, frame_counts_figure, frame_strip, merge_video, strip_layout
from tomviz.ui.common import download_folder, session_state, user_errors
from tomviz.ui.server import HEAVY
from tomviz.ui.video_hbi_section import build_video_hbi_section
from tomviz.trace import Trace
from tomviz.video import VideoResult

MODEL = "dinov2-small"  # the embedded DINOv2-S/14, offline
DEFAULT_EXAMPLE = "world.mp4"
FRAME_CHOICES = (4, 32)  # the frames slider's bounds
SERVER_LIMITS = VideoLimits(max_bytes=25 * 2**20, max_seconds=10 * 60.0, max_frames=20_000, max_pixels=1920 * 1088)
KNOBS = {"holitom": ("tau",), "fastvid": ("tau", "segments")}  # which of the tab's knobs each method reads
FEATURE_CACHE_SIZE = 4  # clips whose encoder outputs are kept (server-wide, least recently used dropped first)
_FEATURES: "OrderedDict[tuple, FrameFeatures]" = OrderedDict()
_FEATURES_LOCK = threading.Lock()  # held only to read or change _FEATURES
LINEAGE_HINT = "*Click a token in the strip: its group is drawn in magenta in every frame it spans.*"
INTRO = ("Drop in a clip (mp4, webm, mov, gif; up to 25 MB) or pick an example. Every sampled frame goes through the "
         "embedded DINOv2-S/14; a temporal method then merges or drops tokens across frames. DINOv2's CLS attention "
         "stands in for SigLIP's pooling-head attention (HoliTom, FastVID) and its final CLS token for FastVID's frame "
         "feature; the methods compare the middle block's tokens (6 of 12), where a moving object and a static "
         f"background differ (the last block makes them look alike). {EXAMPLE_ATTRIBUTION}")


def method_choices() -> list[tuple[str, str]]:
    labels = {"tome": "ToMe over all frames (baseline)", "random": "Random merging over all frames (baseline)"}
    return [(labels.get(name) or cls.label or name, name) for name, cls in registry.classes("clip").items()]


@dataclass
class VideoSession:
    """What redraws and reruns need (per visitor, in gr.State)."""

    key: tuple  # (model, clip, frames)
    video: Video  # the sampled frames
    trace: Trace  # the last run's
    stage: int = -1  # the record the strip shows (TempMe: one per encoder layer; other methods have one)


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
                 session: VideoSession | None = None) -> VideoOutputs:
    """Run the temporal method on the clip and draw the strip. API: ``/inspect_video``."""
    with user_errors("inspect this clip"):
        source = clip_source(upload, example)
        num_frames = int(min(max(FRAME_CHOICES[0], round(frames or 16)), FRAME_CHOICES[1]))
        loaded = tomviz.load(MODEL, untrusted=True)
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
                            text=result_markdown(result), video=str(path), lineage=LINEAGE_HINT)


def lineage_markdown(trace: Trace, token: int, stage: int = -1) -> str:
    """Where the clicked token went by ``stage``: its group's size, the frames it spans, dropped or kept."""
    frame, row, col = trace.token_place(token)
    group = trace.groups(stage)
    name = f"token (frame {frame}, row {row + 1}, col {col + 1})"
    if trace.num_layers > 1:
        name += f" after {trace.meta['stages'][stage]}"
    if group[token] < 0:
        return f"{name} was **dropped** by {trace.meta['method']}."
    members = (group == group[token]).nonzero()[0]
    spanned = sorted({trace.token_place(int(m))[0] for m in members})
    frames = ", ".join(str(f) for f in spanned)
    return (f"{name} is in a group of **{members.size}** tokens spanning **{len(spanned)}** frame(s): {frames}. "
            "The strip draws the group in magenta in every one of them.")


def select_token(session: VideoSession | None, evt: gr.SelectData) -> tuple[Any, str]:
    """A click on the strip: redraw it with the clicked token's group selected."""
    if session is None or evt is None or not isinstance(evt.index, (list, tuple)) or len(evt.index) != 2:
        return gr.skip(), LINEAGE_HINT
    frames, trace = session.video.frames, session.trace
    token = strip_layout(frames).token_at(trace, float(evt.index[0]), float(evt.index[1]))
    if token is None:
        return frame_strip(frames, trace, stage=session.stage), LINEAGE_HINT
    return frame_strip(frames, trace, stage=session.stage, token=token), lineage_markdown(trace, token, session.stage)


def stage_control(session: VideoSession | None) -> Any:
    """The layer slider after a run: one position per record, on the last; shown when there are several."""
    records = 1 if session is None else session.trace.num_layers
    return gr.update(minimum=1, maximum=max(records, 2), value=records, visible=records > 1)


def show_stage(session: VideoSession | None, stage: float) -> tuple[Any, Any, str]:
    """The strip after layer ``stage`` (1-based) of a multi-record trace (TempMe's encoder layers)."""
    if session is None:
        return gr.skip(), gr.skip(), LINEAGE_HINT
    index = int(min(max(1, round(stage or 1)), session.trace.num_layers)) - 1
    session = replace(session, stage=index)
    return session, frame_strip(session.video.frames, session.trace, stage=index), LINEAGE_HINT


def build_video_tab() -> tuple[gr.File, gr.Dropdown]:
    """The tab's layout and events; returns its clip inputs (upload, example) for the question section."""
    session = session_state()
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=3):
            upload = gr.File(label="Clip", file_types=list(VIDEO_SUFFIXES) + [".gif"], type="filepath")
            example = gr.Dropdown(list(example_clips()), value=DEFAULT_EXAMPLE, label="Or an example clip")
            method = gr.Dropdown(method_choices(), value="holitom", label="Method")
            ratio = gr.Slider(0.0, MAX_RATIO, value=0.9, step=0.05, label="Ratio",
                              info="Fraction of the clip's tokens removed (DyCoke: of each pruned frame; RLT: any > 0 runs its pixel rule)")
            frames = gr.Slider(*FRAME_CHOICES, value=16, step=1, label="Frames sampled")
            tau = gr.Number(0.8, label="τ (HoliTom: static-token similarity; FastVID: segment cut below)")
            segments = gr.Number(8, precision=0, label="Segments c (FastVID: cut at the c − 1 least similar frame pairs)")
            run = gr.Button("Inspect clip", variant="primary", elem_id="video-run")
            stage = gr.Slider(1, 2, value=1, step=1, label="Layer", visible=False, elem_id="video-stage",
                              info="TempMe merges inside the encoder: the strip after each of its layers")
        with gr.Column(scale=8):
            strip = gr.Image(label="Frame strip", show_label=False, type="pil", interactive=False, format="png",
                             elem_id="video-strip")
            gr.Markdown(STRIP_LEGEND, elem_classes="caption")
            lineage = gr.Markdown(LINEAGE_HINT, elem_id="video-lineage")
            text = gr.Markdown()
            with gr.Row():
                counts = gr.Plot(label="Tokens per frame")
                video = gr.Video(label="The merge (frames, then their groups)", interactive=False)

    inputs = [upload, example, method, ratio, frames, tau, segments, session]
    components = dict(session=session, strip=strip, counts=counts, text=text, video=video, lineage=lineage)
    outputs = [components[name] for name in VideoOutputs._fields]
    # up to 32 encoder forwards: a heavy event (its own slot, a time budget, stopped when the visitor leaves)
    runs = gr.on([run.click, upload.upload, example.input, method.input, ratio.release], inspect_clip, inputs=inputs,
                 outputs=outputs, api_name="inspect_video", trigger_mode="always_last", **HEAVY)
    runs.then(stage_control, inputs=[session], outputs=[stage], api_name=False)
    stage.release(show_stage, inputs=[session, stage], outputs=[session, strip, lineage], api_name=False)
    strip.select(select_token, [session], [strip, lineage], queue=False)
    build_video_hbi_section(session)  # HBI: the sampled frames × a text's words (CLIP from the hub)
    return upload, example
