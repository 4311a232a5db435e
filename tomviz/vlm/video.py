"""A clip and a question through a video VLM (LLaVA-OneVision, SmolVLM2), unreduced and reduced side by side.

``ask_video(loaded, "clip.mp4", "what happens?", method="holitom", ratio=0.9)`` (:func:`ask_video`):

1. the clip is sampled and preprocessed here (:mod:`tomviz.vlm.video_inputs`); the vision tower and connector
   give every frame's tokens for the LLM, frame-major ``[T, N, D]`` (OneVision: 2x2-pooled, ``n = 196`` at 384 px;
   SmolVLM2: 64 per frame), and the attention each token receives in the tower's last used layer (mean over heads
   and queries, pooled as the tokens are: bilinear for OneVision, pixel-shuffle blocks for SmolVLM), the
   importance HoliTom and FastVID read (FastVID's frame feature: the mean of the frame's tokens);
2. **boundary** (:class:`VideoStages` ``boundary``): any temporal method of registry place ``"clip"`` on those
   tokens (HoliTom's outer stage, DyCoke's pairs, FastVID, FrameFusion's layer-0 rule, frame dropping, ToMe or
   random over all frames); the kept tokens go to the LLM in the order of the places they take, plain (no size
   bias, as the originals hand them on), with the positions renumbered; OneVision's newline stays like text;
3. **inside the LLM** (``llm``): ``"fastv"`` (FastV at layer K), ``"holitom"`` (HoliTom's inner merge at layer
   k, :mod:`tomviz.merge.holitom_inner`) or ``"dycoke"`` (DyCoke's decode-time cache pruning at layer l,
   :mod:`tomviz.merge.dycoke_cache`);
4. greedy answers with and without, and a :class:`~tomviz.trace.Trace` per stage, each over the clip's
   ``T * N`` tokens frame-major (``meta["frame_grid"] = (T, rows, cols)``) so the Video tab's strip draws any:
   ``stages["boundary"]`` (one record), ``stages["llm"]`` (the boundary, then the tokens layers >= K hold) and
   ``stages["cache"]`` (DyCoke: the boundary, then the visual tokens the first decoding step attends to;
   ``meta["cache_steps"]``: that count per step).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tomviz.merge.dycoke_cache import DYCOKE_LAYER, DYCOKE_THRESHOLD, dycoke_cache_keep
from tomviz.merge.fastv import fastv_keep_count, fastv_top
from tomviz.merge.holitom_inner import HOLITOM_LAYER, holitom_fold, holitom_keep_count
from tomviz.merge.request import MergeRequest
from tomviz.merge.temporal.base import TemporalReduction
from tomviz.merge.temporal.methods import ClipInputs, identity_reduction
from tomviz.models import llm
from tomviz.models.vlm import LoadedVLM, encoder_state
from tomviz.trace import LayerTrace, Trace
from tomviz.vlm.decode import Generation
from tomviz.vlm.encode import VisionTower
from tomviz.vlm.sequence import Prefill
from tomviz.vlm.video_inputs import VideoVLMInput, video_layout

LLM_LAYERS = {"fastv": 2, "holitom": HOLITOM_LAYER, "dycoke": DYCOKE_LAYER}  # each method's default layer
PLACES = ("none", "boundary", "llm")


@dataclass
class VideoStages:
    """What to reduce in one call (never stored on the model)."""

    boundary: str = "none"  # a temporal method at the clip's tokens (registry place "clip"), or "none"
    boundary_ratio: float = 0.0  # its ratio (tomviz.merge.temporal.methods says how each method reads it)
    boundary_options: dict[str, Any] = field(default_factory=dict)  # its own knobs (tau, segments, ...)
    llm: str = "none"  # "fastv" | "holitom" (inner merge) | "dycoke" (decode-time cache pruning) | "none"
    llm_ratio: float = 0.5  # fastv / holitom: share of the visual tokens dropped at layer K; dycoke: p (0.8)
    llm_layer: int | None = None  # K / k / l; None: the method's (FastV 2, HoliTom 18, DyCoke 3)
    dycoke_threshold: float = DYCOKE_THRESHOLD  # dycoke: prune in a step whose attention cosine is below this

    def check(self, num_layers: int) -> None:
        if self.boundary != "none":
            method = MergeRequest(method=self.boundary, ratio=self.boundary_ratio, place="clip", modality="video",
                                  method_options=self.boundary_options).clip_method()
            if method.in_encoder:
                raise ValueError(f"{method.name} merges inside the image encoder's layers, not at the boundary")
            if not 0.0 <= self.boundary_ratio <= 1.0:
                raise ValueError(f"the boundary ratio must lie in [0, 1], got {self.boundary_ratio}")
        if self.llm == "none":
            return
        if self.llm not in LLM_LAYERS:
            raise ValueError(f"inside the LLM: one of {', '.join(LLM_LAYERS)} (or none), not {self.llm!r}")
        if not 0.0 <= self.llm_ratio <= 1.0:
            raise ValueError(f"the LLM ratio must lie in [0, 1], got {self.llm_ratio}")
        if not 1 <= self.layer < num_layers:
            raise ValueError(f"{self.llm}'s layer must be 1..{num_layers - 1} in this LLM, got {self.layer}")

    @property
    def layer(self) -> int:
        return LLM_LAYERS.get(self.llm, 0) if self.llm_layer is None else int(self.llm_layer)

    @classmethod
    def at(cls, place: str, method: str, ratio: float, method_options: dict[str, Any] | None = None,
           layer: int | None = None) -> "VideoStages":
        """One stage: ``place="boundary"`` (a clip method), ``"llm"`` (fastv / holitom / dycoke) or ``"none"``."""
        if place not in PLACES:
            raise ValueError(f"place must be one of {', '.join(PLACES)}, got {place!r}")
        if place == "boundary":
            return cls(boundary=method, boundary_ratio=ratio, boundary_options=dict(method_options or {}))
        if place == "llm":
            return cls(llm=method, llm_ratio=ratio, llm_layer=layer)
        return cls()


@dataclass
class EncodedClip:
    """The frames' tokens for the LLM and what the temporal methods read about them."""

    tokens: torch.Tensor  # [T, N, D] frame-major
    attention: torch.Tensor  # [T, N] attention each token receives in the tower's last used layer
    marker: torch.Tensor | None  # [D] OneVision's newline after the frames (None: SmolVLM)
    seconds: float  # the tower and connector

    @property
    def clip(self) -> ClipInputs:
        return ClipInputs(tokens=self.tokens, attention=self.attention, frame_features=self.tokens.mean(1))


def pool_attention(received: torch.Tensor, patch_grid: tuple[int, int], token_grid: tuple[int, int],
                   pooling: str) -> torch.Tensor:
    """``[T, P (+ protected)]`` attention per patch → ``[T, n]`` per LLM token: bilinear like OneVision's pooling,
    or the mean over each pixel-shuffle block."""
    rows, cols = patch_grid
    patches = received[:, received.shape[1] - rows * cols:].float().view(-1, 1, rows, cols)
    if pooling == "bilinear":
        pooled = F.interpolate(patches, size=tuple(token_grid), mode="bilinear")
    else:
        pooled = F.adaptive_avg_pool2d(patches, tuple(token_grid))
    return pooled.flatten(1)


def encode_clip(loaded: LoadedVLM, inputs: VideoVLMInput) -> EncodedClip:
    """The tower and connector on every frame (module docstring, step 1)."""
    layout = video_layout(loaded)
    layer = VisionTower.of(loaded).used - 1
    config = MergeRequest(method="tome", r=0).config()
    start = time.perf_counter()
    with torch.inference_mode():
        state = encoder_state(loaded, config, {"stage": "encoder"}, unmerge=False, attention_layers=(layer,))
        with state:
            features = layout.features(loaded.model, inputs.pixels)[0]  # [T * n (+1), D]
    frames = inputs.video.num_frames
    marker = features[-1] if layout.trailing_marker else None
    tokens = features[: features.shape[0] - int(layout.trailing_marker)].reshape(frames, -1, features.shape[-1])
    attention = pool_attention(state.received[layer], inputs.patch_grid, inputs.token_grid, layout.pooling)
    return EncodedClip(tokens=tokens, attention=attention.to(tokens.device), marker=marker,
                       seconds=time.perf_counter() - start)


def reduce_clip(clip: EncodedClip, stages: VideoStages) -> TemporalReduction:
    """The boundary stage: ``stages.boundary`` on the clip's tokens, or every token alone."""
    if stages.boundary == "none" or stages.boundary_ratio == 0:
        return identity_reduction(clip.tokens)
    request = MergeRequest(method=stages.boundary, ratio=stages.boundary_ratio, place="clip", modality="video",
                           method_options=stages.boundary_options)
    with torch.inference_mode():
        reduction = request.clip_method().reduce(clip.clip, stages.boundary_ratio)
    reduction.validate()
    return reduction


def sequence_groups(reduction: TemporalReduction) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order [M], source [T*N])``: the kept tokens in the order of the places they take, and every input
    token's index among them (-1 dropped)."""
    order = reduction.position.argsort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    source = torch.where(reduction.group >= 0, rank[reduction.group.clamp(min=0)], -1)
    return order, source


def llm_requests(stages: VideoStages, num_visual: int) -> tuple[llm.FastVRequest | None, llm.DyCokeRequest | None]:
    """What the LLM does inside: FastV's or HoliTom's request (layer K, the kept count, the fold), or DyCoke's."""
    if stages.llm == "none" or (stages.llm != "dycoke" and stages.llm_ratio == 0):
        return None, None
    if stages.llm == "dycoke":
        prune, threshold = stages.llm_ratio, stages.dycoke_threshold

        def choose(attention: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor | None:
            return dycoke_cache_keep(attention, previous, prune, threshold)

        return None, llm.DyCokeRequest(layer=stages.layer, select=choose)
    count = holitom_keep_count if stages.llm == "holitom" else fastv_keep_count
    keep = max(1, count(num_visual, stages.llm_ratio))
    return llm.FastVRequest(layer=stages.layer, keep=keep, select=lambda attention: fastv_top(attention, keep)[0],
                            fold=holitom_fold if stages.llm == "holitom" else None), None


def video_prefill(loaded: LoadedVLM, inputs: VideoVLMInput, clip: EncodedClip, reduction: TemporalReduction,
                  stages: VideoStages) -> Prefill:
    """The LLM's input: the prompt's embeddings ``[1, L, C]`` with the frames' tokens replaced by the kept ones
    ``[1, L', C]`` (each at the first place of its group's member that the method names; positions renumbered)."""
    ids = inputs.tensors["input_ids"]
    visual = ids[0] == inputs.token_id  # [L]
    places = visual.nonzero()[:, 0]
    layout = video_layout(loaded)
    marker = None
    if layout.trailing_marker:
        marker, places = places[-1], places[:-1]
        visual[marker] = False
    if places.numel() != clip.tokens.shape[0] * clip.tokens.shape[1]:
        raise ValueError(f"{places.numel()} frame tokens in the prompt for {tuple(clip.tokens.shape[:2])} (frames, tokens)")
    order, _ = sequence_groups(reduction)
    with torch.inference_mode():
        embeds = loaded.language_model.get_input_embeddings()(ids)  # [1, L, C]
        if marker is not None:
            embeds[0, marker] = clip.marker.to(embeds.dtype)
        keep_seq = ~visual.clone()
        keep_seq[places[reduction.position[order]]] = True
        embeds = embeds[:, keep_seq].clone()
        new_visual = visual[keep_seq]
        embeds[0, new_visual] = reduction.tokens[order].to(embeds.dtype)
    fastv, dycoke = llm_requests(stages, int(new_visual.sum()))
    return Prefill(embeds=embeds, visual=new_visual, key_bias=None, fastv=fastv, stages={},
                   encoder_seconds=clip.seconds, dycoke=dycoke)


def _layer(source: torch.Tensor | np.ndarray, num_out: int) -> LayerTrace:
    source = np.asarray(torch.as_tensor(source).cpu(), dtype=np.int32)
    sizes = np.bincount(source[source >= 0], minlength=num_out).astype(np.float32)
    return LayerTrace(source=source, sizes=sizes, num_tokens_in=int(source.shape[0]))


def stage_traces(loaded: LoadedVLM, inputs: VideoVLMInput, reduction: TemporalReduction, stages: VideoStages,
                 prefill: Prefill, generation: Generation) -> dict[str, Trace]:
    """The traces of module docstring step 4, each over the clip's ``T * N`` tokens."""
    order, source = sequence_groups(reduction)
    source = source.cpu()
    frames = inputs.video.num_frames
    rows, cols = inputs.token_grid
    meta = {"model": loaded.name, "family": loaded.adapter.family, "frame_grid": [frames, rows, cols],
            "num_protected": 0, "num_input_tokens": frames * rows * cols, "prop_attn": False,
            "timestamps": list(inputs.video.timestamps), "segments": [list(s) for s in reduction.segments],
            "kept_positions": reduction.position[order].cpu().tolist()}
    boundary = _layer(source, reduction.num_kept)
    out = {"boundary": Trace(meta={**meta, "stage": "boundary", "method": stages.boundary, "stages": [stages.boundary],
                                   "schedule": [boundary.num_tokens_in - boundary.num_tokens]}, layers=[boundary])}
    visual_positions = prefill.visual.nonzero()[:, 0]
    if prefill.fastv is not None and generation.keep is not None:
        kept = torch.isin(visual_positions, generation.keep)  # [M] which visual tokens layers >= K hold
        dst = torch.where(kept, kept.long().cumsum(0) - 1, -1)
        if generation.folded is not None:  # HoliTom: every dropped token joined a kept one
            dst = generation.folded  # [M] index among the kept, ascending: the numbering above
        inner = _layer(torch.where(source >= 0, dst.cpu()[source.clamp(min=0)], -1), int(kept.sum()))
        out["llm"] = Trace(meta={**meta, "stage": "llm", "method": stages.llm, "layer": stages.layer,
                                 "stages": [stages.boundary, stages.llm]}, layers=[boundary, inner])
    steps = generation.dycoke_steps
    if steps:
        first = steps[0] if steps[0] is not None else torch.arange(reduction.num_kept)
        kept = torch.zeros(reduction.num_kept, dtype=torch.bool)
        kept[first.cpu()] = True
        dst = torch.where(kept, kept.long().cumsum(0) - 1, -1)
        cache = _layer(torch.where(source >= 0, dst[source.clamp(min=0)], -1), int(kept.sum()))
        counts = [reduction.num_kept if s is None else int(s.numel()) for s in steps]
        out["cache"] = Trace(meta={**meta, "stage": "cache", "method": "dycoke", "layer": stages.layer,
                                   "stages": [stages.boundary, "dycoke"], "cache_steps": counts}, layers=[boundary, cache])
    return out
