"""MustDrop on a vision-language model (``place="llm"``, ``method="mustdrop"``): its four stages, each traced.

1. ``stages["encoder"]``: local 3x3 window merging after the vision encoder's first layer (the patches → the
   LLM's visual tokens; :func:`vision`). The LLM receives the tokens in the original's order (merged windows best
   first, then the rest), as ``stages["boundary"]`` shows the same partition.
2. ``stages["key_set"]``: the key set from the CLS attention of the encoder's last layer: every visual token
   stays (identity), ``meta["key_set"]`` lists the protected ones.
3. ``stages["llm"]``: dual-attention filtering, one layer per pruning layer (:func:`filter_stage`).
4. ``stages["cache"]``: the visual tokens each LLM layer's KV cache holds while decoding (:func:`cache_stage`).

Rules: :mod:`tomviz.merge.mustdrop`; where they run: :mod:`tomviz.models.mustdrop`. Options
(``method_options``): ``window_threshold`` (0.8), ``key_rate`` (0.08), ``global_thr`` and ``individual_thr``
(the authors' 192-token script: 0.001, 0.001), ``layers`` (2, 6, 10, 14). A ratio above 0 switches it on; the
thresholds, not the ratio, decide the count. Supported: LLaVA with a CLS token that the projector drops (one
crop, a square patch grid divisible by 3) and a rotary LLM with more layers than the last pruning layer.

Run end to end beside the original (liuting20/MustDrop @909afa5 on transformers 4.37.2, as its pyproject pins;
``LlavaLlamaDynamicForCausalLM.generate`` with only its two ``.cuda()`` calls moved to the CPU) on a LLaVA-1.5
layout with the original's shapes in 32-wide random weights (CLIP 336 px / 14 with 24 layers, a 32-layer Llama) and
identical weights and inputs, 4 images x 5 threshold pairs: the key sets 20/20, the kept visual tokens after
each pruning layer 80/80, the 5-token greedy answers 20/20, every step's logits within 2.1e-5. The count is
data-dependent: there the authors' 192-token thresholds (0.001, 0.001) kept 176-363 of 248-576 visual tokens
after layer 14, the 64-token ones (0.011, 0.01) 35-71, (0.05, 0.03) 16-50, (0.2, 0.1) 6-47 (never fewer than the
key set).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tomviz.merge import mustdrop as rules
from tomviz.merge.plan import MergePlan
from tomviz.merge.visual import group_sizes
from tomviz.models import mustdrop as wiring
from tomviz.models.vlm import LoadedVLM
from tomviz.trace import LayerTrace, Trace
from tomviz.vlm.reduction import Reduction

OPTIONS = {"window_threshold": rules.WINDOW_THRESHOLD, "key_rate": rules.KEY_RATE, "global_thr": rules.THRESHOLDS[192][0],
           "individual_thr": rules.THRESHOLDS[192][1], "layers": rules.PRUNING_LAYERS}


def wanted(red: Reduction) -> bool:
    """Whether ``red`` asks for MustDrop (inside the LLM, ratio above 0)."""
    return red.place == "llm" and red.method == "mustdrop" and red.ratio > 0


def options(loaded: LoadedVLM, red: Reduction) -> dict[str, Any]:
    """``red.method_options`` over :data:`OPTIONS`; ValueError for what ``loaded`` cannot run or an unknown option."""
    unknown = set(red.method_options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"mustdrop takes the options {', '.join(OPTIONS)}, not {', '.join(sorted(unknown))}")
    values = {**OPTIONS, **red.method_options}
    values["layers"] = tuple(sorted(int(layer) for layer in values["layers"]))
    adapter = loaded.adapter
    if adapter.pre_projector is None or adapter.protected_dropped(loaded.model) != 1:
        raise ValueError(f"mustdrop merges the CLIP tower's windows after its first layer and reads its CLS attention, "
                         f"as the authors' LLaVA-1.5 code does; {loaded.name} ({adapter.family}) has no CLS token that "
                         "its projector drops: use fastv or aim inside the LLM")
    num_layers = len(loaded.language_model.layers)
    layers = values["layers"]
    if not layers or layers[0] < 0 or layers[-1] >= num_layers - 1:
        raise ValueError(f"mustdrop filters after the LLM layers {list(layers)}; {loaded.name}'s LLM has {num_layers} "
                         f"layers: give method_options layers below {num_layers - 1}")
    if getattr(loaded.language_model, "rotary_emb", None) is None:
        raise ValueError(f"mustdrop renumbers RoPE positions; {loaded.name}'s LLM has no rotary_emb")
    return values


@dataclass
class Windows:
    """Stages 1 and 2 on one image."""

    features: torch.Tensor  # [1, N', D] the LLM's visual tokens, in the original's order
    plan: MergePlan  # [1, N] patches → the N' tokens
    key: torch.Tensor  # [K] the key set, indices into the N' tokens
    threshold: float  # the window threshold it ran with


def vision(loaded: LoadedVLM, tensors: dict[str, torch.Tensor], red: Reduction) -> Windows:
    """The vision tower and projector with MustDrop's window merging and key set (:class:`VisionRun`)."""
    values = options(loaded, red)
    wiring.apply_vision(loaded.vision)
    run = wiring.VisionRun(threshold=float(values["window_threshold"]), key_rate=float(values["key_rate"]))
    with torch.inference_mode(), run:
        features = loaded.adapter.image_features(loaded.model, tensors)[None]  # [1, N', D]
    if run.plan is None or run.key is None:
        raise ValueError(f"mustdrop's hooks did not run in {loaded.name}'s vision tower")
    if features.shape[0] != 1 or run.plan.dst.shape[0] != 1:
        raise ValueError("mustdrop runs on one image of one crop (LLaVA-1.5)")
    dst = run.plan.dst[:, 1:] - 1  # [1, N] patch → token among the non-CLS outputs
    plan = MergePlan(dst=dst, num_out=run.plan.num_out - 1)
    if plan.num_out != features.shape[1]:
        raise ValueError(f"{features.shape[1]} visual features for {plan.num_out} merged patches")
    return Windows(features=features, plan=plan, key=run.key[0], threshold=run.threshold)


def request(loaded: LoadedVLM, red: Reduction, visual: torch.Tensor, key: torch.Tensor) -> wiring.MustDropRequest:
    """The LLM's part for a prefill whose visual tokens are ``visual`` ``[L']`` bool (one contiguous block)."""
    values = options(loaded, red)
    positions = visual.nonzero()[:, 0]
    return wiring.MustDropRequest(visual_start=int(positions[0]), num_visual=int(positions.numel()), key=key,
                                  rotary=loaded.language_model.rotary_emb, layers=values["layers"],
                                  global_thr=float(values["global_thr"]), individual_thr=float(values["individual_thr"]))


def _layer(kept: torch.Tensor) -> LayerTrace:
    """A layer that keeps the visual tokens ``kept`` ``[V]`` bool (renumbered in order), the others -1."""
    dst = torch.where(kept, kept.long().cumsum(0) - 1, -1).cpu().numpy().astype(np.int32)
    return LayerTrace(source=dst, sizes=np.ones(int(kept.sum()), np.float32), num_tokens_in=int(kept.numel()))


def _trace(layers: list[LayerTrace], meta: dict[str, Any], stage: str) -> Trace:
    counts = [layers[0].num_tokens_in] + [layer.num_tokens for layer in layers]
    return Trace(meta={**meta, "stage": stage, "method": "mustdrop", "num_input_tokens": counts[0], "num_protected": 0,
                       "schedule": [a - b for a, b in zip(counts, counts[1:])], "prop_attn": False}, layers=layers)


def encoder_stage(plan: MergePlan, meta: dict[str, Any], threshold: float) -> Trace:
    """Stage 1: the patches → the merged windows and the rest (one layer; a merged window has size 9)."""
    sizes = group_sizes(plan)[0].cpu().numpy().astype(np.float32)
    layer = LayerTrace(source=plan.dst[0].cpu().numpy().astype(np.int32), sizes=sizes, num_tokens_in=plan.num_in)
    return _trace([layer], {**meta, "window_threshold": threshold, "after_encoder_layer": 0,
                            "windows_merged": int((sizes > 1).sum())}, "encoder")


def key_set_stage(key: torch.Tensor, num_tokens: int, meta: dict[str, Any]) -> Trace:
    """Stage 2: every visual token stays; ``meta["key_set"]`` the ones the LLM never drops."""
    trace = _trace([_layer(torch.ones(num_tokens, dtype=torch.bool))], meta, "key_set")
    trace.meta["key_set"] = sorted(int(k) for k in key)
    return trace


def filter_stage(visual: torch.Tensor, kept: list[torch.Tensor], meta: dict[str, Any], layers: tuple[int, ...]) -> Trace:
    """Stage 3: after each pruning layer the visual tokens left. visual: ``[L]`` bool over the prefill; kept: per
    pruning layer ``[L_s]`` the prefill positions left after it."""
    positions = visual.nonzero()[:, 0]
    trace = _trace([_layer(torch.isin(positions, stay)) for stay in kept], meta, "llm")
    trace.meta["pruning_layers"] = list(layers)
    return trace


def cache_stage(visual: torch.Tensor, request: wiring.MustDropRequest, num_layers: int, meta: dict[str, Any]) -> Trace:
    """Stage 4: per LLM layer, the visual tokens its KV cache holds while decoding (all in the layers before the
    first pruning layer; the last stage's survivors from it on)."""
    positions = visual.nonzero()[:, 0]
    layers = []
    for index in range(num_layers):
        held = request.entering(index, prefill=False)
        layers.append(_layer(torch.ones_like(positions, dtype=torch.bool) if held is None else torch.isin(positions, held)))
    return _trace(layers, meta, "cache")
