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
from tomviz.merge.presets import PRESETS, tinychart_ratio
from tomviz.models.hub import offline_reason
from tomviz.models.vlm import LoadedVLM
from tomviz.ratio_grid import foreground
from tomviz.render.vlm import answer_attention_overlay, reaches_llm_overlay
from tomviz.ui.common import MAX_RATIO, PromptBox, session_state, user_errors
from tomviz.ui.guards import ImageFile
from tomviz.ui.server import HEAVY

# SmolVLM-256M fits the CPU cap (TOMVIZ_MAX_PARAMETERS); the others need the CUDA cap (a GPU Space). The pictures draw
# every tile on the part of the photo it shows (a split image's crops in place, the global view beside them;
# LLaVA-OneVision's base view and anyres grid side by side); OneVision takes grid-free methods only (tome, dtome,
# random_prune, fastv).
# Qwen2-VL / Qwen2.5-VL reduce at every place (in their encoder with methods that read the tokens alone).
VLM_MODELS = ["HuggingFaceTB/SmolVLM-256M-Instruct", "HuggingFaceTB/SmolVLM-500M-Instruct",
              "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava-hf/llava-1.5-7b-hf",
              "Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"]
PLACES = [("In the vision encoder (merge, compute, unmerge)", "encoder"),
          ("At the boundary (the tokens the LLM receives)", "boundary"),
          ("Inside the LLM (FastV at layer K; AIM's PageRank pruning)", "llm")]
MAX_NEW_TOKENS = 48
HUB_NOTE = ("Vision-language models load from the Hugging Face hub (no VLM weights ship in a package). "
            "Where the hub cannot be reached this tab says so and the other tabs keep working.")


MUSTDROP_NOTE = ("mustdrop's thresholds, not the ratio, decide how many visual tokens stay (the ratio only switches it "
                 "on); this tab uses the authors' 192-token script: global 0.001, individual 0.001. The count depends on "
                 "the image and the model: on LLaVA-1.5-7B the authors' scripts give about 192 tokens (0.001, 0.001), "
                 "128 (0.0012, 0.001) and 64 (0.011, 0.01); on the tiny random-weight test models (0.001, 0.001) kept "
                 "176-363 of 248-576 visual tokens after layer 14 and (0.011, 0.01) 35-71 (the count after each pruning "
                 "layer is listed above)")


def method_choices(place: str = "boundary") -> list[tuple[str, str]]:
    """``(label, name)`` of the methods that run at ``place``, from the registry, then the papers' presets there
    (TinyChart: ToMe in the encoder)."""
    registry.check_place(place)
    classes = registry.classes(place)
    methods = [(classes[name].label or name, name) for name in registry.names(place)]
    return methods + [(preset.label, name) for name, preset in PRESETS.items() if preset.place == place]


def update_methods(place: str, method: str | None = None):
    """The method dropdown for ``place``: its choices; the current method stays when it runs there."""
    choices = method_choices(place or "boundary")
    names = [name for _, name in choices]
    return gr.Dropdown(choices=choices, value=method if method in names else names[0])


def resolve_method(place: str, method: str, ratio: float) -> tuple[str, float, str]:
    """``(registry method, ratio, note)`` for the tab's choice: a preset becomes its method at its own ratio
    (TinyChart: the fraction its ``r = 84`` per layer removes at 768 px); a method that does not run at ``place``,
    or a preset of another place, raises the registry's message."""
    preset = PRESETS.get(method)
    if preset is None:
        registry.entry(method, place)  # the registry's message for a method that does not work there
        if place == "llm" and method == "aim":
            return method, ratio, ("aim inside the LLM follows the authors' schedule (all visual tokens up to half the "
                                   "layers, then 1/8 fewer per layer); the ratio only switches it on")
        if place == "llm" and method == "mustdrop":
            return method, ratio, MUSTDROP_NOTE
        return method, ratio, ""
    if preset.place != place:
        raise ValueError(f"{method} is a preset {registry.where(preset.place)}, not {registry.where(place)}: "
                         f"choose the place {preset.place!r}")
    fraction = tinychart_ratio((preset.image_size // preset.patch_size) ** 2, preset.encoder_layers, preset.r)
    note = (f"{method}: {preset.method} with proportional attention, constant r; the ratio is the preset's "
            f"{fraction:.3f} (r = {preset.r} per layer at {preset.image_size} px), not the slider's")
    return preset.method, fraction, note


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
    cls = f", +{c['carried']} CLS" if c.get("carried") else ""
    return (
        f"**Tokens** — patches {c['patches']} → visual tokens {c['visual']} → the LLM receives {c['llm_input']} "
        f"(+{c['text']} text{cls}) → from layer K {c['llm_after_k']}\n\n"
        f"| | encoder s | prefill s | time to first token s | decode s |\n|---|---|---|---|---|\n"
        f"| unreduced | {t['reference_encoder_s']:.3f} | {t['reference_prefill_s']:.3f} | {t['reference_ttft_s']:.3f} | {t['reference_decode_s']:.3f} |\n"
        f"| reduced | {t['encoder_s']:.3f} | {t['prefill_s']:.3f} | {t['ttft_s']:.3f} | {t['decode_s']:.3f} |"
    )


def _stages_markdown(res) -> str:
    """The LLM stage layer by layer, when it has more than one (AIM): the visual tokens left after each layer;
    MustDrop: its four stages one after the other."""
    if res.reduction.method == "mustdrop" and "key_set" in res.stages:
        return _mustdrop_markdown(res.stages)
    stage = res.stages.get("llm")
    if stage is None or stage.num_layers < 2:
        return ""
    counts = " → ".join(str(layer.num_tokens) for layer in stage.layers)
    return f"\n\n**Inside the LLM** ({stage.meta['method']}): visual tokens attended to after each layer {counts}"


def _mustdrop_markdown(stages) -> str:
    """MustDrop's stages: window merging, key set, filtering at each pruning layer, the caches while decoding."""
    windows, key = stages["encoder"], stages["key_set"]
    lines = [f"1. window merging after encoder layer 0: {windows.num_input_tokens} → {windows.layers[0].num_tokens} "
             f"({windows.meta['windows_merged']} windows of 9)",
             f"2. key set from the last encoder layer's CLS attention: {len(key.meta['key_set'])} tokens always kept"]
    if "llm" in stages:
        llm = stages["llm"]
        after = ", ".join(f"layer {layer}: {trace.num_tokens}" for layer, trace in zip(llm.meta["pruning_layers"], llm.layers))
        lines.append(f"3. dual-attention filtering (global {llm.meta['global_thr']}, individual "
                     f"{llm.meta['individual_thr']}): visual tokens after {after}")
        held = " ".join(str(layer.num_tokens) for layer in stages["cache"].layers)
        lines.append(f"4. KV caches while decoding, visual tokens per LLM layer: {held}")
    return "\n\n**MustDrop**\n\n" + "\n".join(lines)


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
        options = dict(PRESETS[method].method_options) if method in PRESETS else {}
        method, ratio, note = resolve_method(place, method, float(ratio))
        tokens = int(min(max(1, round(max_new_tokens or 24)), MAX_NEW_TOKENS))
        res = tomviz.inspect(loaded, (image, question), ratio=float(ratio), method=method, place=place,
                             method_options=options, max_new_tokens=tokens)
        boundary = res.stages["boundary"]
        overlay = reaches_llm_overlay(res.inputs.image, boundary)
        attention = answer_attention_overlay(res.inputs.image, boundary, res.answer_attention, 0)
        steps = gr.Dropdown(choices=_step_choices(res), value=0)
        counts = _counts_markdown(res) + _stages_markdown(res) + (f"\n\n{note}" if note else "")
        return VLMOutputs(session=VLMSession(result=res), overlay=overlay, answers=_answer_markdown(res),
                          counts=counts, steps=steps, attention=attention)


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
    reason = offline_reason(model)
    if reason is None:
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
            image = ImageFile(label="Image")  # a checked file path (header bounds before decoding)
            question = PromptBox(label="Question", value="What is in this image?")
            model = gr.Dropdown(VLM_MODELS, value=VLM_MODELS[0], label="Model", allow_custom_value=True,
                                info="SmolVLM / Idefics3 / LLaVA from the Hugging Face hub")
            place = gr.Radio(PLACES, value="boundary", label="Where to reduce")
            method = gr.Dropdown(method_choices("boundary"), value="tome", label="Method",
                                 info="The methods that run at the chosen place")
            ratio = gr.Slider(0.0, MAX_RATIO, value=0.5, step=0.05, label="Ratio", info="Fraction of the visual tokens removed")
            max_new = gr.Slider(1, MAX_NEW_TOKENS, value=24, step=1, label="Answer length bound (tokens)")
            run = gr.Button("Ask", variant="primary")
        with gr.Column(scale=7):
            answers = gr.Markdown(label="Answers")
            with gr.Row():
                overlay = gr.Image(label="What reaches the LLM (groups of visual tokens; dark = dropped; "
                                         "a split image: its crops in place, then the global view)", type="pil")
                attention = gr.Image(label="Where the answer token looked (mean over LLM layers; every tile)", type="pil")
            step = gr.Dropdown(choices=[], label="Answer token", info="Pick a word of the unreduced answer")
            counts = gr.Markdown(label="Token counts and timings")

    inputs = [image, question, model, place, method, ratio, max_new, session]
    components = dict(session=session, overlay=overlay, answers=answers, counts=counts, steps=step, attention=attention)
    outputs = [components[name] for name in VLMOutputs._fields]
    gr.on([run.click, question.submit], foreground(ask), inputs=inputs, outputs=outputs, api_name="ask_vlm", **HEAVY,
          trigger_mode="always_last")
    place.change(update_methods, inputs=[place, method], outputs=method, api_visibility="private", queue=False,
                 show_progress="hidden")
    gr.on(None, hub_notice, None, notice, api_visibility="private", queue=False, show_progress="hidden")  # page load
    step.input(show_step, inputs=[step, session], outputs=attention, api_name="show_vlm_step", queue=False)
