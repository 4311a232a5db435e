"""The Video tab's "HBI (frames × words)" section: the clip the tab inspected, a text, and stock CLIP applied per
frame; frame groups × word groups as one Banzhaf game (:func:`tomviz.score_analysis.video_hbi`).

CLIP's weights come from the Hugging Face hub. Where the hub cannot be reached and the weights are not cached,
the section says so plainly at page load and on a click, and the rest of the tab keeps working (the temporal
methods run on the embedded DINOv2). Handlers are module-level functions; the visitor's result stays in
``gr.State`` (numpy and the small picture only).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import gradio as gr
from PIL import Image

import tomviz
from tomviz import score_analysis
from tomviz.models.hub import offline_reason
from tomviz.ratio_grid import foreground
from tomviz.render.scores import interaction_figure
from tomviz.score_analysis import VIDEO_HBI_SAMPLES, VideoHBISession
from tomviz.scores.video_hbi import LEVELS
from tomviz.ui.common import MAX_SEED, PromptBox, session_state, user_errors
from tomviz.ui.guards import escape_markdown
from tomviz.ui.server import HEAVY

CLIP_MODEL = "openai/clip-vit-base-patch32"
INTRO = ("## HBI (frames × words)\nHBI (Jin et al., CVPR 2023) treats a clip's frames and a text's words as players "
         "of one game whose value is the video–text similarity; the interaction of a frame group and a word group "
         "says how much they count *together*. Stock CLIP embeds every frame the tab sampled (inspect the clip "
         "above first) and every word; untrained density-peak clustering (DPC-KNN, HBI's ratios 0.25 then 0.5) "
         "stands in for HBI's trained merge modules, uniform weights for its trained weight heads. CLIP's weights "
         "come from the Hugging Face hub.")


class VideoHBIOutputs(NamedTuple):
    """What ``score_clip_text`` returns, one field per output component (wired in this order)."""

    session: VideoHBISession | None
    picture: Image.Image | None  # frame strip by group, words by group, interaction heat map
    cross: Any  # plotly heat map with standard errors on hover
    summary: str  # markdown


def offline_message(model: str, reason: str) -> str:
    return (f"### HBI needs CLIP from the Hugging Face hub\n**{escape_markdown(model)}** cannot be loaded on this "
            f"server ({escape_markdown(reason, 300)}): no CLIP weights ship in a package. With hub access (e.g. on "
            "Hugging Face Spaces) this section shows the frames and words grouped by colour and their interactions. "
            "The rest of the Video tab works offline.")


def hbi_hub_notice(model: str = CLIP_MODEL) -> str:
    """Page load: a plain notice when CLIP cannot load here (not cached, hub unreachable: a cheap, remembered
    check), else nothing."""
    reason = offline_reason(model)
    if reason is None:
        return ""
    return offline_message(model, reason)


def summary_markdown(session: VideoHBISession) -> str:
    r = session.result
    how = "exact (all coalitions)" if r.exact else f"{r.samples} sampled coalitions, seed {r.seed}"
    return (f"**{r.num_frame_groups} frame groups** of {len(r.frame_groups)} frames × **{r.num_word_groups} word "
            f"groups** of {len(r.words)} words ({LEVELS[r.level]}), {escape_markdown(r.model)}; {how}. Value with "
            f"everything present {r.full_value:.4f}, with nothing {r.empty_value:.4f}. Interactions are in cosine units.")


def score_clip_text(video_session: Any, text: str, model: str = CLIP_MODEL, level: float = 1, samples: float = 2048,
                    seed: float = 0, progress: gr.Progress = gr.Progress()) -> VideoHBIOutputs:
    """Frames of the inspected clip × the words of ``text``. API: ``/score_video_hbi``."""
    model = (model or CLIP_MODEL).strip()
    try:
        with user_errors("score frames × words"):
            if video_session is None or getattr(video_session, "video", None) is None:
                raise ValueError("inspect a clip first (the button above): HBI plays its sampled frames")
            session = score_analysis.video_hbi(
                model, video_session.video, text, level=int(round(level)), samples=int(samples), seed=int(seed),
                untrusted=True, progress=lambda fraction, message: progress(fraction, desc=f"Estimating: {message}"))
    except gr.Error as err:
        if isinstance(err.__cause__, tomviz.ModelLoadError):
            return VideoHBIOutputs(None, None, None, offline_message(model, str(err.__cause__)[:300]))
        raise
    r = session.result
    cross = interaction_figure(r.cross, r.frame_group_names(), r.word_group_names(), stderr=r.cross_stderr,
                               title="Frame group × word group interaction")
    return VideoHBIOutputs(session, session.picture, cross, summary_markdown(session))


def build_video_hbi_section(video_session: gr.State) -> None:
    """Lay out the section under the Video tab's views; ``video_session`` is the tab's state (its sampled frames)."""
    gr.Markdown(INTRO)
    notice = gr.Markdown(elem_id="video-hbi-notice")
    state = session_state()
    with gr.Row():
        with gr.Column(scale=3):
            text = PromptBox("a globe turning in space", label="Text (its words are players)")
            model = PromptBox(CLIP_MODEL, label="CLIP model (Hugging Face id)")
            level = gr.Radio([(name, k) for k, name in enumerate(LEVELS)], value=1, label="Players")
            samples = gr.Slider(VIDEO_HBI_SAMPLES[0], VIDEO_HBI_SAMPLES[1], value=2048, step=16,
                                label="Samples (coalitions; exact up to 12 players)")
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
            run = gr.Button("Score frames × words", variant="primary", elem_id="video-hbi-run")
        with gr.Column(scale=8):
            summary = gr.Markdown(elem_id="video-hbi-summary")
            picture = gr.Image(label="Frames and words by group; interactions (red +, blue −, ± 1 s.e.)", type="pil",
                               format="png", interactive=False)
            cross = gr.Plot(label="Frame group × word group interaction (hover)")

    components = dict(session=state, picture=picture, cross=cross, summary=summary)
    gr.on([run.click, text.submit], foreground(score_clip_text), inputs=[video_session, text, model, level, samples, seed],
          outputs=[components[name] for name in VideoHBIOutputs._fields], api_name="score_video_hbi",
          trigger_mode="always_last", **HEAVY)
    gr.on(None, hbi_hub_notice, None, notice, api_visibility="private", queue=False, show_progress="hidden")  # page load
