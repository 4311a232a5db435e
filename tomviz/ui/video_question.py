"""The Video tab's "question" section: a video VLM (LLaVA-OneVision, SmolVLM2) answers about the clip with and
without a reduction at the boundary (a temporal method) or inside the LLM (FastV, HoliTom's inner merge, DyCoke's
decode-time cache pruning), and the strip shows the stage's groups.

Layout first, event wiring last; the handler is a module-level function (testable without a browser). The clip
is the tab's own (upload or example, the same frame count). No VLM weights ship in a package: on a server without
hub access the section says so before any click, and the rest of the tab keeps working offline.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import gradio as gr
from PIL import Image

import tomviz
from tomviz.merge import registry
from tomviz.models.hub import offline_reason
from tomviz.models.vlm import LoadedVLM
from tomviz.render.video import frame_strip
from tomviz.ui.common import MAX_RATIO, PromptBox, user_errors
from tomviz.ui.server import HEAVY
from tomviz.ui.video_tab import SERVER_LIMITS, build_video_tab, clip_source

VIDEO_VLMS = ["HuggingFaceTB/SmolVLM2-256M-Video-Instruct", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"]
QUESTION_FRAMES = (2, 16)  # LLaVA-OneVision: 196 tokens a frame; SmolVLM2: 64
MAX_NEW_TOKENS = 48
LLM_METHODS = [("FastV (drop at layer K)", "fastv"), ("HoliTom inner merge (fold at layer k)", "holitom"),
               ("DyCoke cache pruning (while decoding)", "dycoke")]
PLACES = [("At the boundary (a temporal method on the tokens the LLM receives)", "boundary"),
          ("Inside the LLM", "llm")]
WOULD_SHOW = ("both answers (without and with the reduction), the frame strip of what reaches the LLM and of what "
              "the LLM keeps inside, and the token counts and timings")


def question_notice(model: str = VIDEO_VLMS[0]) -> str:
    """Before any click: a plain notice when ``model`` cannot load here (not cached, the hub unreachable)."""
    reason = offline_reason(model)
    if reason is None:
        return ""
    return (f"**This server cannot reach the Hugging Face hub ({reason}).** Asking about the clip needs "
            f"LLaVA-OneVision or SmolVLM2 from the hub (`{model}` is not cached here), so **Ask** cannot run on this "
            f"server. With hub access (e.g. on Hugging Face Spaces) this section shows {WOULD_SHOW}. The rest of the "
            "Video tab works offline.")


def question_methods(place: str = "boundary") -> list[tuple[str, str]]:
    """``(label, name)`` of the methods at ``place``: the temporal methods (registry place ``"clip"``) or the LLM's."""
    if place == "llm":
        return list(LLM_METHODS)
    return [(cls.label or name, name) for name, cls in registry.classes("clip").items()
            if not getattr(cls, "in_encoder", False)]  # TempMe merges inside the image encoder, not at the boundary


def update_methods(place: str):
    """The method dropdown for ``place`` (HoliTom runs at both)."""
    return gr.Dropdown(choices=question_methods(place or "boundary"), value="holitom")


class QuestionOutputs(NamedTuple):
    answers: str  # both answers and the fidelity (markdown)
    strip: Image.Image  # the frame strip of the last stage
    counts: str  # token counts and timings (markdown)


def answers_markdown(res: Any) -> str:
    f, r = res.fidelity, res.reduction
    what = (f"boundary {r.boundary} {r.boundary_ratio:.2f}" if r.boundary != "none" else
            f"LLM {r.llm} at layer {r.layer}, ratio {r.llm_ratio:.2f}" if r.llm != "none" else "nothing")
    return (f"| | answer |\n|---|---|\n| **unreduced** | {res.reference_answer or '(empty)'} |\n"
            f"| **reduced** ({what}) | {res.answer or '(empty)'} |\n\n"
            f"**Fidelity** on the unreduced answer: log-likelihood {f.log_likelihood:.3f} "
            f"(unreduced {f.reference_log_likelihood:.3f}), first-token KL {f.first_token_kl:.4f}, "
            f"exact match **{'yes' if f.exact_match else 'no'}**")


def counts_markdown(res: Any) -> str:
    c, t = res.token_counts, res.timings
    steps = res.stages["cache"].meta["cache_steps"] if "cache" in res.stages else None
    cache = f"\n\nDyCoke: image tokens attended to per decoding step {steps}" if steps else ""
    return (f"**Tokens** — the frames' {c['clip']} → the LLM receives {c['llm_input']} (+{c['text']} text) → from "
            f"layer K {c['llm_after_k']}{cache}\n\n| | prefill s | decode s |\n|---|---|---|\n"
            f"| unreduced | {t['reference_prefill_s']:.3f} | {t['reference_decode_s']:.3f} |\n"
            f"| reduced | {t['prefill_s']:.3f} | {t['decode_s']:.3f} |\n\nvision tower and connector: {t['encoder_s']:.3f} s")


def ask_clip(upload: str | None, example: str | None, frames: float, question: str | None,
             model: str = VIDEO_VLMS[0], place: str = "boundary", method: str = "holitom", ratio: float = 0.5,
             layer: float | None = None, max_new_tokens: float = 24) -> QuestionOutputs:
    """Answer about the clip with and without the reduction. API: ``/ask_video``."""
    with user_errors("answer this question about the clip"):
        if not question or not question.strip():
            raise ValueError("the question is empty: type a question about the clip")
        source = clip_source(upload, example)
        num_frames = int(min(max(QUESTION_FRAMES[0], round(frames or 8)), QUESTION_FRAMES[1]))
        loaded = tomviz.load((model or VIDEO_VLMS[0]).strip(), untrusted=True)
        if not isinstance(loaded, LoadedVLM) or loaded.adapter.video is None:
            raise ValueError(f"{model} takes no clips here: use LLaVA-OneVision or SmolVLM2")
        tokens = int(min(max(1, round(max_new_tokens or 24)), MAX_NEW_TOKENS))
        res = tomviz.inspect(loaded, (str(source), question), method=method, ratio=float(ratio), place=place,
                             layer=None if not layer else int(layer), num_frames=num_frames, max_new_tokens=tokens,
                             limits=SERVER_LIMITS)
        return QuestionOutputs(answers=answers_markdown(res), strip=frame_strip(res.video.frames, res.trace),
                               counts=counts_markdown(res))


def build_video_page(demo: gr.Blocks | None = None) -> None:
    """The Video tab, then its question section on the same clip; with ``demo`` (the app) a Video-tab link opens
    its view on page load."""
    build_video_question(*build_video_tab(demo))


def build_video_question(upload: gr.File, example: gr.Dropdown) -> None:
    """The section, under the tab's clip inputs (``upload``, ``example``)."""
    with gr.Accordion("Ask a video VLM about the clip (LLaVA-OneVision / SmolVLM2 from the Hugging Face hub)", open=False):
        notice = gr.Markdown(elem_id="video-question-notice")
        with gr.Row():
            with gr.Column(scale=3):
                question = PromptBox(label="Question", value="What happens in this video?")
                model = gr.Dropdown(VIDEO_VLMS, value=VIDEO_VLMS[0], label="Model", allow_custom_value=True)
                frames = gr.Slider(*QUESTION_FRAMES, value=8, step=1, label="Frames sampled")
                place = gr.Radio(PLACES, value="boundary", label="Where to reduce")
                method = gr.Dropdown(question_methods("boundary"), value="holitom", label="Method")
                ratio = gr.Slider(0.0, MAX_RATIO, value=0.5, step=0.05, label="Ratio",
                                  info="Boundary: as above; FastV / HoliTom: share dropped at layer K; DyCoke: p")
                layer = gr.Number(None, precision=0, label="LLM layer (empty: FastV 2, HoliTom 18, DyCoke 3)")
                max_new = gr.Slider(1, MAX_NEW_TOKENS, value=24, step=1, label="Answer length bound (tokens)")
                ask = gr.Button("Ask", elem_id="video-question-ask")
            with gr.Column(scale=8):
                answers = gr.Markdown()
                strip = gr.Image(label="What the LLM gets (the stage's groups)", type="pil", interactive=False,
                                 format="png")
                counts = gr.Markdown()

    inputs = [upload, example, frames, question, model, place, method, ratio, layer, max_new]
    gr.on([ask.click, question.submit], ask_clip, inputs=inputs, outputs=[answers, strip, counts], api_name="ask_video",
          trigger_mode="always_last", **HEAVY)
    place.change(update_methods, inputs=place, outputs=method, api_visibility="private", queue=False,
                 show_progress="hidden")
    gr.on(None, question_notice, None, notice, api_visibility="private", queue=False, show_progress="hidden")
