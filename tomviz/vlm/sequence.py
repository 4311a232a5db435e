"""The boundary between the vision encoder and the LLM: reduce the visual tokens and build the LLM's input.

The reduced sequence keeps the text tokens and puts each visual group where its first member sat;
positions are renumbered contiguously (as VisionZip does), except under FastV, where the kept
tokens keep their positions, and in a family that numbers its tokens itself (Qwen2-VL's multimodal RoPE:
:attr:`~tomviz.models.vlm.VLMAdapter.positions`), where every kept token keeps its original position ids. Each reduction is traced as a one-step :class:`~tomviz.trace.Trace`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from tomviz.merge import aim
from tomviz.merge.plan import MergePlan
from tomviz.merge.fastv import fastv_keep_count, fastv_top
from tomviz.merge.visual import VisualTokens, group_sizes, sequence_order
from tomviz.models import llm
from tomviz.models.mustdrop import MustDropRequest
from tomviz.models.vlm import LoadedVLM
from tomviz.vlm import mustdrop
from tomviz.trace import LayerTrace, Trace
from tomviz.vlm.encode import Encoded, shares_encoding, timed_encode
from tomviz.vlm.inputs import VLMInput
from tomviz.vlm.reduction import Reduction


@dataclass
class Prefill:
    """The LLM's (reduced) input and how it came to be."""

    embeds: torch.Tensor  # [1, L', C]
    visual: torch.Tensor  # [L'] bool, the visual tokens of the sequence
    key_bias: torch.Tensor | None  # [L'] log(size) of visual groups (0 for text), or None
    fastv: llm.FastVRequest | None
    stages: dict[str, Trace]
    encoder_seconds: float  # vision encoder + boundary reduction
    positions: torch.Tensor | None = None  # [3, 1, L'] the LLM's position ids (Qwen2-VL's M-RoPE); None: 0..L'-1
    vtu: llm.VirtualTokens | None = None  # DyMU's virtual token unmerging: the unmerged sequence behind embeds
    aim: llm.AIMRequest | None = None  # AIM's PageRank pruning inside the LLM
    mustdrop: MustDropRequest | None = None  # MustDrop's filtering and cache eviction inside the LLM
    dycoke: llm.DyCokeRequest | None = None  # DyCoke's decode-time cache pruning inside the LLM

    def llm_state(self, **fields: Any) -> llm.LLMState:
        """The LLM's per-call state for this prefill (``fields``: overrides, e.g. a longer ``visual``)."""
        values = dict(visual=self.visual, key_bias=self.key_bias, fastv=self.fastv, vtu=self.vtu, aim=self.aim,
                      mustdrop=None if self.mustdrop is None else replace(self.mustdrop),  # (its own copy: filled per call)
                      dycoke=None if self.dycoke is None else replace(self.dycoke, previous=None, steps=[]))
        return llm.LLMState(**{**values, **fields})

    def position_ids(self, stop: int, start: int = 0) -> dict[str, torch.Tensor]:
        """``{"position_ids": [3, 1, stop - start]}``: the positions of the tokens ``start..stop-1`` of the prefill
        and the tokens after it, which count on from the largest prefill position (as Qwen2-VL numbers text after
        an image), computed per request: no position offset is kept on the model. ``{}`` when ``positions`` is None."""
        if self.positions is None:
            return {}
        after = self.positions.max() + 1 + torch.arange(max(0, stop - self.positions.shape[-1]), device=self.positions.device)
        full = torch.cat([self.positions, after.expand(*self.positions.shape[:2], -1)], dim=-1)
        return {"position_ids": full[..., start:stop]}


def stage_trace(name: str, plan: MergePlan, meta: dict[str, Any]) -> Trace:
    """A one-step Trace over the ``plan.num_in`` visual tokens."""
    sizes = group_sizes(plan)[0].cpu().numpy().astype(np.float32)
    layer = LayerTrace(source=plan.dst[0].cpu().numpy().astype(np.int32), sizes=sizes, num_tokens_in=plan.num_in)
    meta = {**meta, "stage": name, "num_input_tokens": plan.num_in, "num_protected": 0,
            "schedule": [plan.num_in - plan.num_out], "prop_attn": meta.get("prop_attn", False)}
    return Trace(meta=meta, layers=[layer])


def in_sequence_order(features: torch.Tensor, plan, num_visual: int, merged: bool):
    """(features ``[1, V', C]``, plan, sizes ``[1, V']`` or None) with the groups in the sequence order of their
    first patch. ``merged``: the encoder merged already (``features`` holds one row per group, in the plan's
    order); otherwise ``features`` ``[1, V, C]`` holds every visual token and is reduced by the plan here."""
    if merged:
        first = plan.reduce_min(torch.arange(num_visual, device=plan.dst.device)[None])[0]  # [V']
        plan = sequence_order(plan)
        return features[:, first.argsort()], plan, group_sizes(plan)
    plan = sequence_order(plan)
    sizes = None
    if plan.num_out != num_visual:
        features, sizes = plan.merge(features, None)
        sizes = sizes[..., 0]
    return features, plan, sizes


def to_prefill(loaded: LoadedVLM, inputs: VLMInput, encoded: Encoded, red: Reduction) -> Prefill:
    """Reduce at the boundary and build the LLM's input sequence: input_ids ``[1, L]`` → embeds ``[1, L', C]``."""
    if encoded.carried is not None:
        prefill = ordered_prefill(loaded, inputs, encoded, red, encoded.features, encoded.plan, encoded.carried)
        if encoded.key_set is not None:
            prefill.mustdrop = mustdrop.request(loaded, red, prefill.visual, encoded.key_set)
        return prefill
    features, plan, token_grid, num_tiles = encoded.features, encoded.plan, encoded.token_grid, encoded.num_tiles
    stages = dict(encoded.stages)
    input_ids = inputs.tensors["input_ids"]
    visual = input_ids[0] == loaded.image_token_id  # [L]
    marker_positions = None
    if encoded.markers is not None:  # layout markers: kept like text
        marker_positions = visual.nonzero()[:, 0][encoded.markers]
        visual[marker_positions] = False
    num_visual = int(visual.sum())
    with torch.inference_mode():
        boundary_meta = {**encoded.meta, "method": "none", "prop_attn": red.prop_attn}
        if red.place == "encoder":
            boundary_meta["method"] = f"encoder:{red.method}"
        if red.place == "boundary" and red.ratio > 0:
            method = encoded.boundary_method
            keep = max(1, num_visual - int(round(red.ratio * num_visual)))
            tokens = VisualTokens(features=features, tile_grid=token_grid, num_tiles=num_tiles, seed=red.seed)
            if method.needs_attention:
                tokens.attention, tokens.attention_middle = encoded.attention["deep"], encoded.attention.get("middle")
            if method.own_values:
                return ordered_prefill(loaded, inputs, encoded, red, *method.reduce(tokens, keep))
            plan = method.plan(tokens, keep)
            boundary_meta["method"] = red.method
        features, plan, sizes = in_sequence_order(features, plan, num_visual, encoded.merged)
        stages["boundary"] = stage_trace("boundary", plan, boundary_meta)
        embeds = loaded.language_model.get_input_embeddings()(input_ids)  # [1, L, C]
        if marker_positions is not None:
            embeds = embeds.clone()
            embeds[0, marker_positions] = encoded.marker_features[0].to(embeds.dtype)
        first_member = plan.reduce_min(torch.arange(num_visual, device=plan.dst.device)[None])[0]  # [V'] ascending
        keep_seq = ~visual.clone()
        keep_seq[visual.nonzero()[:, 0][first_member]] = True
        embeds = embeds[:, keep_seq].clone()
        new_visual = visual[keep_seq]
        embeds[0, new_visual] = features[0].to(embeds.dtype)
        key_bias = size_bias(sizes, new_visual, red)
        fastv, aim_pruning = llm_requests(loaded, red, num_visual)
        vtu = None
        positions = kept_positions(loaded, inputs, keep_seq.nonzero()[:, 0])
        if red.vtu:
            key_bias = None  # each member is its own virtual key: no log-size bias
            vtu = virtual_tokens(loaded, plan, keep_seq, visual, first_member)
    return Prefill(embeds=embeds, visual=new_visual, key_bias=key_bias, fastv=fastv, stages=stages, encoder_seconds=0.0,
                   vtu=vtu, aim=aim_pruning, positions=positions)


def kept_positions(loaded: LoadedVLM, inputs: VLMInput, columns: torch.Tensor) -> torch.Tensor | None:
    """``[3, 1, L']``: the family's position ids of the whole prompt (:attr:`VLMAdapter.positions`) at ``columns``
    (``[L']`` long, the prompt token whose ids each reduced token takes: itself, or a group's first member), so
    kept tokens keep their original positions; None when the family has none."""
    rule = loaded.adapter.positions
    return None if rule is None else rule(loaded.model, inputs.tensors)[..., columns]


def size_bias(sizes: torch.Tensor | None, visual: torch.Tensor, red: Reduction) -> torch.Tensor | None:
    """``[L']`` the ``log(size)`` of each visual group (0 for text) when ``red`` passes sizes into the LLM's
    attention (``prop_attn`` at the boundary or the encoder); None otherwise or when every size is 1.
    sizes: ``[1, V']``; visual: ``[L']`` bool."""
    if sizes is None or not red.prop_attn or red.place not in ("boundary", "encoder"):
        return None
    key_bias = torch.zeros(visual.shape[0], device=visual.device)
    key_bias[visual] = sizes[0].float().log()
    return key_bias if bool(key_bias.any()) else None


def ordered_prefill(loaded: LoadedVLM, inputs: VLMInput, encoded: Encoded, red: Reduction, features: torch.Tensor,
                    plan: MergePlan, carried: torch.Tensor | None = None) -> Prefill:
    """The LLM's input when a method gives the LLM's tokens itself, in its own order (VisionZip before the
    projector, AIM's merging): each crop's ``n`` features ``[1, T*n, D]`` take the first ``n`` places of that
    crop's image block, as the originals put their image features where the image token was (contiguous
    positions, no size bias; a family with its own position ids gives each feature its group's first member's). ``carried`` ``[T*n]`` bool (VisionZip: each crop's CLS) are passed on like text:
    no visual token of the trace, whose groups are ``plan``'s (outputs in the features' order, without them)."""
    if red.vtu:
        raise ValueError(f"virtual token unmerging expands merged groups; {red.method} gives the LLM tokens that are "
                         "no group means: use tome, dtome or downsample")
    input_ids = inputs.tensors["input_ids"]
    visual = input_ids[0] == loaded.image_token_id  # [L]
    num_crops = encoded.num_tiles
    per_crop = features.shape[1] // num_crops
    blocks = visual.nonzero()[:, 0].view(num_crops, -1)  # [T, P] each crop's image positions
    keep_seq = ~visual
    keep_seq[blocks[:, :per_crop].reshape(-1)] = True
    image = visual[keep_seq]  # [L'] the features' places
    with torch.inference_mode():
        embeds = loaded.language_model.get_input_embeddings()(input_ids)[:, keep_seq].clone()  # [1, L', C]
        embeds[0, image] = features[0].to(embeds.dtype)
    new_visual = image.clone()
    if carried is not None:
        new_visual[image.nonzero()[:, 0][carried]] = False
    meta = {**encoded.meta, "method": red.method, "prop_attn": False}
    stages = {**encoded.stages, "boundary": stage_trace("boundary", plan, meta)}
    columns = keep_seq.nonzero()[:, 0]  # [L'] each token's own column; the groups take their first member's
    first = plan.reduce_min(torch.arange(plan.num_in, device=columns.device)[None])[0]  # [V'] in the features' order
    columns[new_visual] = visual.nonzero()[:, 0][first]
    return Prefill(embeds=embeds, visual=new_visual, key_bias=None, fastv=None, stages=stages, encoder_seconds=0.0,
                   positions=kept_positions(loaded, inputs, columns))


def virtual_tokens(loaded: LoadedVLM, plan: MergePlan, keep_seq: torch.Tensor, visual: torch.Tensor,
                   first_member: torch.Tensor) -> llm.VirtualTokens:
    """The unmerged sequence behind a merged prefill, for VTU.

    plan: ``[1, V]`` visual token → group (sequence order); keep_seq: ``[L]`` bool, the positions of the
    full sequence that the merged one keeps (text, and each group's first member); visual: ``[L]`` bool;
    first_member: ``[V']``. Returns ``index [L]``: the merged position each full position is a copy of.
    """
    if bool((plan.dst < 0).any()):
        raise ValueError("virtual token unmerging needs a plan that only merges: this method prunes visual tokens "
                         "(use tome, dtome or downsample)")
    rotary = getattr(loaded.language_model, "rotary_emb", None)
    if loaded.adapter.positions is not None:
        raise ValueError(f"virtual token unmerging places its copies at positions 0..N-1; {loaded.adapter.family} "
                         "numbers its tokens itself (multimodal RoPE): not supported")
    if rotary is None:
        raise ValueError(f"virtual token unmerging needs a rotary (RoPE) LLM; {loaded.name}'s has no rotary_emb")
    merged_index = keep_seq.long().cumsum(0) - 1  # [L] merged position of each kept full position
    visual_positions = visual.nonzero()[:, 0]  # [V]
    group_position = merged_index[visual_positions[first_member]]  # [V'] merged position of each group
    index = merged_index.clone()
    index[visual_positions] = group_position[plan.dst[0]]
    return llm.VirtualTokens(index=index, rotary=rotary)


def llm_requests(loaded: LoadedVLM, red: Reduction, num_visual: int) -> tuple[llm.FastVRequest | None, llm.AIMRequest | None]:
    """What the LLM does inside at ``place="llm"``: FastV's request or AIM's (None, None elsewhere)."""
    if red.place != "llm" or red.ratio == 0:
        return None, None
    if red.method == "aim":
        return None, aim_request(loaded, red)
    return fastv_request(loaded, red, num_visual), None


def fastv_request(loaded: LoadedVLM, red: Reduction, num_visual: int) -> llm.FastVRequest:
    if not 1 <= red.fastv_layer < len(loaded.language_model.layers):
        raise ValueError(f"fastv_layer must be 1..{len(loaded.language_model.layers) - 1}")
    keep = max(1, fastv_keep_count(num_visual, red.ratio))  # FastV's round(V (1 - r)); at least one

    def select(attention: torch.Tensor) -> torch.Tensor:
        """attention ``[1, V]`` → the kept visual indices ``[keep]``, ascending (``torch.topk``, as FastV)."""
        return fastv_top(attention, keep)[0]

    return llm.FastVRequest(layer=red.fastv_layer, keep=keep, select=select)


def aim_request(loaded: LoadedVLM, red: Reduction) -> llm.AIMRequest:
    """AIM's pruning schedule for this LLM (:func:`tomviz.merge.aim.retain_rates`): ``method_options`` ``start``
    (default :func:`~tomviz.merge.aim.default_start`), ``step`` (1/8) and ``drop`` (False: mask, as the authors
    do; True: remove the pruned tokens). The schedule is the authors', not the ratio's: a ratio above 0
    switches it on."""
    options = dict(red.method_options)
    unknown = set(options) - {"start", "step", "drop"}
    if unknown:
        raise ValueError(f"aim inside the LLM takes the options start, step and drop, not {', '.join(sorted(unknown))}")
    num_layers = len(loaded.language_model.layers)
    start = int(options.get("start", aim.default_start(num_layers)))
    if not 0 <= start < num_layers:
        raise ValueError(f"aim's first pruning layer must be 0..{num_layers - 1}, got {start}")
    rates = aim.retain_rates(num_layers, start, float(options.get("step", aim.RATE_STEP)))
    return llm.AIMRequest(rates=rates, drop=bool(options.get("drop", False)))


def build_prefill(loaded: LoadedVLM, inputs: VLMInput, red: Reduction, encoded: Encoded | None = None) -> Prefill:
    """:func:`~tomviz.vlm.encode.encode` then :func:`to_prefill`, timed together (``encoder_seconds``).

    encoded: ``inputs`` already encoded at ``place="none"`` (the reference run's), reused instead of running
    the vision tower again where ``red`` reduces nothing there (:func:`~tomviz.vlm.encode.shares_encoding`);
    its own time counts as the encoder's."""
    if encoded is None or not shares_encoding(red) or encoded.meta["place"] != "none":
        encoded = timed_encode(loaded, inputs, red)
    else:
        encoded = replace(encoded, meta={**encoded.meta, "place": red.place})
    start = time.perf_counter()
    prefill = to_prefill(loaded, inputs, encoded, red)
    prefill.encoder_seconds = encoded.seconds + time.perf_counter() - start
    return prefill
