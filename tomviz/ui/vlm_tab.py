"""The "Image + question" tab: a vision-language model answers with and without visual-token reduction.

Layout first, event wiring last; handlers are module-level functions (testable without a browser).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import gradio as gr
from PIL import Image

import tomviz
from tomviz.merge import registry
from tomviz.merge.visual import VISUAL_METHODS
from tomviz.models.hub import hub_unreachable, is_cached
from tomviz.models.vlm import LoadedVLM
from tomviz.ratio_grid import foreground
from tomviz.render.vlm import answer_attention_overlay, reaches_llm_overlay
from tomviz.ui.common import MAX_RATIO, PromptBox, session_state, user_errors

# SmolVLM-256M fits the CPU cap (TOMVIZ_MAX_PARAMETERS); the others need the CUDA cap. LLaVA-OneVision is drawn on
# its anyres grid (the last tile); it takes grid-free methods only (tome, dtome, random_prune, fastv).
VLM_MODELS = ["HuggingFaceTB/SmolVLM-256M-Instruct", "HuggingFaceTB/SmolVLM-500M-Instruct",
              "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava-hf/llava-1.5-7b-hf"]
PLACES = [("In the vision encoder (merge, compute, unmerge)", "encoder"),
          ("At the boundary (the tokens the LLM receives)", "boundary"),
          ("Inside the LLM at layer K (FastV)", "llm")]
MAX_NEW_TOKENS = 48
HUB_NOTE = ("Vision-language models load from the Hugging Face hub (no VLM weights ship in a package). "
            "Where the hub cannot be reached this tab says so and the other tabs keep working.")


def method_choices() -> list[tuple[str, str]]:
    encoder = [(f"encoder: {cls.label or name}", name) for name, cls in tomviz.METHODS.items()]
    visual = [(f"boundary / LLM: {cls.label}", name) for name, cls in VISUAL_METHODS.items() if name not in tomviz.METHODS]
    return encoder + visual


@dataclass
class VLMSession:
    """What the redraws need (per visitor, in gr.State): the result's picture, traces and attention."""

    result: Any  # tomviz.vlm.VLMResult


def _answer_markdown(res) -> str:
    f = res.fidelity
    return (
        f"| | answer |\n|---|---|\n| **unreduced** | {res.reference_answer or '(empty)'} |\n"
        f"| **reduced** ({res.reduction.place}, {res.reduction.method}, ratio {res.reduction.ratio:.2f}) | {res.answer or '(empty)'} |\n\n"
        f"**Fidelity** on the unreduced answer: log-likelihood {f.log_likelihood:.3f} (unreduced {f.reference_log_likelihood:.3f}), "
        f"first-token KL {f.first_token_kl:.4f}, exact match **{'yes' if f.exact_match else 'no'}**"
    )


def _counts_markdown(res) -> str:
    c, t = res.token_counts, res.timings
    return (
        f"**Tokens** — patches {c['patches']} → visual tokens {c['visual']} → the LLM receives {c['llm_input']} "
        f"(+{c['text']} text) → from layer K {c['llm_after_k']}\n\n"
        f"| | encoder s | prefill s | time to first token s | decode s |\n|---|---|---|---|---|\n"
        f"| unreduced | {t['reference_encoder_s']:.3f} | {t['reference_prefill_s']:.3f} | {t['reference_ttft_s']:.3f} | {t['reference_decode_s']:.3f} |\n"
        f"| reduced | {t['encoder_s']:.3f} | {t['prefill_s']:.3f} | {t['ttft_s']:.3f} | {t['decode_s']:.3f} |"
    )


def _step_choices(res) -> list[tuple[str, int]]:
    return [(f"{i}: {token}", i) for i, token in enumerate(res.answer_tokens)]


class VLMOutputs(NamedTuple):
    """What ``ask`` returns, one field per output component (wired in this order)."""

    session: VLMSession
    overlay: Image.Image  # what reaches the LLM: groups of visual tokens, dropped ones dark
    answers: str  # both answers (markdown)
    counts: str  # token counts and timings (markdown)
    steps: Any  # gr.Dropdown update: the answer tokens
    attention: Image.Image  # where answer token 0 looked


def ask(image, question: str | None, model: str = VLM_MODELS[0], place: str = "boundary", method: str = "tome",
        ratio: float = 0.5, max_new_tokens: float = 24, session: VLMSession | None = None) -> VLMOutputs:
    """Answer with and without reduction, and draw what reached the LLM. API: ``/ask_vlm``."""
    with user_errors("answer this question"):
        if image is None:
            raise ValueError("give an image first")
        if not question or not question.strip():
            raise ValueError("the question is empty: type a question about the image")
        loaded = tomviz.load((model or VLM_MODELS[0]).strip(), untrusted=True)
        if not isinstance(loaded, LoadedVLM):
            raise ValueError(f"{model} is not a vision-language model: this tab takes SmolVLM / Idefics3 / LLaVA models")
        if place == "llm":
            method = "fastv"
        registry.entry(method, place)  # the registry's message for a method that does not work there
        tokens = int(min(max(1, round(max_new_tokens or 24)), MAX_NEW_TOKENS))
        res = tomviz.inspect(loaded, (image, question), ratio=float(ratio), method=method, place=place, max_new_tokens=tokens)
        boundary = res.stages["boundary"]
        overlay = reaches_llm_overlay(res.inputs.image, boundary)
        attention = answer_attention_overlay(res.inputs.image, boundary, res.answer_attention, 0)
        steps = gr.Dropdown(choices=_step_choices(res), value=0)
        return VLMOutputs(session=VLMSession(result=res), overlay=overlay, answers=_answer_markdown(res),
                          counts=_counts_markdown(res), steps=steps, attention=attention)


def show_step(step: int | None, session: VLMSession | None = None):
    """Where answer token ``step`` looked (mean over the LLM's layers), from the stored result."""
    with user_errors("draw the attention"):
        if session is None:
            raise ValueError("ask a question first")
        res = session.result
        step = int(min(max(0, step or 0), res.answer_attention.shape[1] - 1))
        return answer_attention_overlay(res.inputs.image, res.stages["boundary"], res.answer_attention, step)


WOULD_SHOW = ("both answers (without and with the reduction) and how faithful the reduced one is, the picture of "
              "what reaches the LLM (groups of visual tokens, dropped ones dark), where each answer token looked, "
              "and the token counts and timings of both runs")


def hub_notice(model: str = VLM_MODELS[0]) -> str:
    """Before any click: a plain notice when ``model`` cannot load here (not in the Hugging Face cache, and the
    hub unreachable: a cheap check, remembered for minutes), else nothing."""
    reason = hub_unreachable()
    if reason is None or is_cached(model):
        return ""
    return (f"### This server cannot reach the Hugging Face hub ({reason})\n"
            f"No vision-language model weights ship in a package and `{model}` is not cached here, so **Ask** "
            f"cannot run on this server. With hub access (e.g. on Hugging Face Spaces) this tab shows {WOULD_SHOW}. "
            "Every other tab works offline.")


def build_vlm_tab() -> None:
    session = session_state()
    gr.Markdown("Ask a vision-language model about a photo, then see which visual tokens it keeps, merges and attends to. " + HUB_NOTE)
    notice = gr.Markdown(elem_id="vlm-hub-notice")
    with gr.Row():
        with gr.Column(scale=4):
            image = gr.Image(type="pil", label="Image")
            question = PromptBox(label="Question", value="What is in this image?")
            model = gr.Dropdown(VLM_MODELS, value=VLM_MODELS[0], label="Model", allow_custom_value=True,
                                info="SmolVLM / Idefics3 / LLaVA from the Hugging Face hub")
            place = gr.Radio(PLACES, value="boundary", label="Where to reduce")
            method = gr.Dropdown(method_choices(), value="tome", label="Method")
            ratio = gr.Slider(0.0, MAX_RATIO, value=0.5, step=0.05, label="Ratio", info="Fraction of the visual tokens removed")
            max_new = gr.Slider(1, MAX_NEW_TOKENS, value=24, step=1, label="Answer length bound (tokens)")
            run = gr.Button("Ask", variant="primary")
        with gr.Column(scale=7):
            answers = gr.Markdown(label="Answers")
            with gr.Row():
                overlay = gr.Image(label="What reaches the LLM (groups of visual tokens; dark = dropped)", type="pil")
                attention = gr.Image(label="Where the answer token looked (mean over LLM layers)", type="pil")
            step = gr.Dropdown(choices=[], label="Answer token", info="Pick a word of the unreduced answer")
            counts = gr.Markdown(label="Token counts and timings")

    inputs = [image, question, model, place, method, ratio, max_new, session]
    components = dict(session=session, overlay=overlay, answers=answers, counts=counts, steps=step, attention=attention)
    outputs = [components[name] for name in VLMOutputs._fields]
    gr.on([run.click, question.submit], foreground(ask), inputs=inputs, outputs=outputs, api_name="ask_vlm",
          concurrency_id="model", concurrency_limit=1, trigger_mode="always_last")
    gr.on(None, hub_notice, None, notice, api_visibility="private", show_progress="hidden")  # page load
    step.input(show_step, inputs=[step, session], outputs=attention, api_name="show_vlm_step", queue=False)
