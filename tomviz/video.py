"""Inspect a clip: frames → a per-frame image encoder → a temporal method → a :class:`~tomviz.trace.Trace`.

``tomviz.inspect(model, "clip.mp4" | frames, method="holitom", ratio=0.9)`` lands here (:func:`inspect_video`):

1. the clip is decoded and sampled to ``num_frames`` frames (:func:`tomviz.inputs.video.read_video`, its
   bounds checked from the header before decoding);
2. the image model (default the embedded DINOv2-S/14) encodes every frame
   (:func:`tomviz.models.frames.encode_frames`): block ``feature_layer``'s patch tokens, the last block's
   CLS attention, the final CLS token and the normalised pixels;
3. the temporal method (registry place ``"clip"``, :mod:`tomviz.merge.temporal.methods`) reduces the
   clip's ``T * N`` tokens at once, timed on its own (its cost in ms per frame);
4. the trace has one record per temporal step (``meta["stages"]``) whose ``source`` maps each input token —
   frame-major, ``(frame, row, col)`` by ``meta["frame_grid"]`` — to its group, -1 when dropped. Every method
   is one step except TempMe, which merges inside the encoder (``in_encoder``): the frames go through it as one
   batch joined into clips layer by layer (:func:`tomviz.models.frames.encode_clip_merged`), one record per
   block (the protected tokens left out and the groups renumbered, :func:`in_encoder_trace`);
5. fidelity: the cosine between the pooled embedding of the unreduced clip (the mean of all frames'
   final patch tokens) and the reduced one, where each group hands on one token, the mean of its members'
   final tokens. ``fidelity`` pools those tokens weighted by group size (as the image fidelity weighs merged
   tokens: only dropping moves it); ``token_mean_fidelity`` takes each handed-on token once (what a
   consumer that sees every token alike, e.g. an LLM without size bias, averages: merging moves it too).
   For TempMe the handed-on tokens are the merged encoder's own final tokens.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from tomviz.inputs.video import VIDEO_SUFFIXES, Video, VideoLimits, read_video
from tomviz.merge.request import MergeRequest
from tomviz.merge.temporal.base import TemporalReduction, mean_by_group
from tomviz.merge.temporal.methods import ClipInputs, ClipMethod
from tomviz.models.frames import (
    FrameFeatures,
    MergedClip,
    encode_clip_merged,
    encode_frames,
    middle_block,
)
from tomviz.models.loading import LoadedModel
from tomviz.trace import LayerTrace, Trace

DEFAULT_FRAMES = 16


@dataclass
class VideoResult:
    """One inspected clip."""

    trace: Trace  # one record per temporal step; meta["frame_grid"] = (T, rows, cols)
    video: Video  # the sampled frames [T, H, W, 3]
    reduction: TemporalReduction  # the method's kept tokens and partition
    features: FrameFeatures  # what the encoder gave the method
    request: MergeRequest
    method_ms_per_frame: float  # the temporal method's own cost (TempMe: the whole merged encoder)
    encoder_ms_per_frame: float  # the per-frame encoder without the method
    fidelity: float  # cosine of the pooled embedding (size-weighted), reduced vs unreduced
    token_mean_fidelity: float  # the same with each handed-on token once
    in_encoder: bool = False  # the method merged inside the encoder (TempMe): one trace record per layer

    def token_counts(self) -> list[int]:
        """Tokens before and after each stage: ``[T * N, M]``."""
        return self.trace.token_counts()

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest (the CLI's stats.json, the app's API)."""
        frames, rows, cols = self.trace.frame_grid
        return {
            "model": self.trace.meta.get("model"), "method": self.trace.meta["method"], "ratio": self.request.ratio,
            "method_options": dict(self.request.method_options), "frame_grid": [frames, rows, cols],
            "feature_layer": self.features.feature_layer, "timestamps": list(self.video.timestamps),
            "token_counts": self.token_counts(), "tokens_per_frame": self.trace.tokens_per_frame().tolist(),
            "segments": [list(s) for s in self.reduction.segments],
            "groups_spanning_frames": int((self.reduction.frames_spanned() > 1).sum()),
            "dropped_tokens": int((self.reduction.group < 0).sum()),
            "method_ms_per_frame": self.method_ms_per_frame, "encoder_ms_per_frame": self.encoder_ms_per_frame,
            "fidelity_cosine": self.fidelity, "token_mean_cosine": self.token_mean_fidelity,
            "in_encoder": self.in_encoder,
        }


def is_video_input(x: Any) -> bool:
    """True for what :func:`inspect_video` takes: a :class:`Video`, a clip's path, a folder of frames, a list of
    frames (paths, arrays, PIL images) or a ``[T, H, W, 3]`` uint8 array (for an image model: a text model
    reads every string as text)."""
    if isinstance(x, Video):
        return True
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return True
        try:
            return path.is_dir()
        except (OSError, ValueError):  # a long text, a NUL byte: not a path
            return False
    if isinstance(x, np.ndarray):
        return x.ndim == 4
    return isinstance(x, list) and len(x) > 0  # a tuple is a VLM's (image, question)


def clip_trace(reduction: TemporalReduction, features: FrameFeatures, meta: dict[str, Any]) -> Trace:
    """The trace of one temporal step: ``source`` = the reduction's group of every input token."""
    group = reduction.group.cpu().numpy().astype(np.int32)
    sizes = reduction.group_sizes().cpu().numpy().astype(np.float32)
    frames, rows, cols = reduction.num_frames, *features.patch_grid
    layer = LayerTrace(source=group, sizes=sizes, num_tokens_in=group.shape[0],
                       cls_attention=features.attention.flatten().numpy().astype(np.float32))
    meta = {**meta, "frame_grid": [frames, rows, cols], "num_protected": 0, "num_input_tokens": int(group.shape[0]),
            "patch_size": features.patch_size, "segments": [list(s) for s in reduction.segments],
            "kept_positions": reduction.position.cpu().tolist()}
    return Trace(meta=meta, layers=[layer])


def in_encoder_trace(merged: MergedClip, rows: int, cols: int, meta: dict[str, Any]) -> tuple[Trace, np.ndarray]:
    """The clip trace of a method inside the encoder, from the engine's (input tokens ``T * (P + N)``, CLS first
    in each frame): the patch tokens only, frame-major, each layer's groups renumbered in token order. Returns
    it and ``[M]`` the last layer's kept engine tokens (indices into ``merged.final``)."""
    per_frame, protected = merged.tokens_per_frame, merged.num_protected
    frames = len(merged.trace.layers[0].source) // per_frame
    patch = np.arange(frames * per_frame) % per_frame >= protected  # [T * (P + N)]
    layers, kept = [], np.zeros(0, dtype=np.int64)
    for record in merged.trace.layers:
        source = record.source[patch]  # [T * N] engine token of every patch
        kept, group = np.unique(source, return_inverse=True)  # patches never share a token with a CLS
        entering = len(layers[-1].sizes) if layers else frames * (per_frame - protected)
        layer = LayerTrace(source=group.astype(np.int32), sizes=np.bincount(group, minlength=kept.size).astype(np.float32),
                           num_tokens_in=entering)
        if record.cls_attention is not None:
            layer.cls_attention = record.cls_attention[kept].astype(np.float32)
        layers.append(layer)
    first = np.full(kept.size, np.iinfo(np.int64).max)
    np.minimum.at(first, layers[-1].source, np.arange(layers[-1].source.size))
    meta = {**meta, "frame_grid": [frames, rows, cols], "num_protected": 0, "num_input_tokens": frames * rows * cols,
            "stages": [f"layer {index}" for index in range(len(layers))], "segments": [],
            "schedule": list(merged.trace.meta["schedule"]), "kept_positions": first.tolist()}
    return Trace(meta=meta, layers=layers), kept


class InEncoderRun(NamedTuple):
    """A method inside the encoder on one clip."""

    trace: Trace
    reduction: TemporalReduction  # its tokens: the merged encoder's final tokens of the kept groups
    fidelity: float  # size-weighted (module docstring, step 5)
    token_mean_fidelity: float
    seconds: float  # the merged encoder's forward


def inspect_in_encoder(loaded: LoadedModel, video: Video, clip_method: ClipMethod, ratio: float,
                       features: FrameFeatures, meta: dict[str, Any]) -> InEncoderRun:
    """Run a method that merges inside the encoder on ``video``; ``features``: the unreduced run (the reference)."""
    merged = encode_clip_merged(loaded, video.frames, clip_method.encoder_method(ratio))
    rows, cols = features.patch_grid
    trace, kept = in_encoder_trace(merged, rows, cols, {**meta, "patch_size": features.patch_size})
    group = torch.from_numpy(trace.layers[-1].source.astype(np.int64))
    tokens = merged.final[torch.from_numpy(kept)]  # [M, C]
    reduction = TemporalReduction(tokens, group, torch.tensor(trace.meta["kept_positions"]), video.num_frames, rows * cols)
    reference = features.final.reshape(-1, features.final.shape[-1]).double().mean(0)
    sizes = reduction.group_sizes().double()[:, None]
    weighted = (tokens.double() * sizes).sum(0) / sizes.sum()
    return InEncoderRun(trace, reduction, float(F.cosine_similarity(weighted, reference, dim=0)),
                        float(F.cosine_similarity(tokens.double().mean(0), reference, dim=0)), merged.seconds)


def pooled_fidelity(final: torch.Tensor, reduction: TemporalReduction) -> tuple[float, float]:
    """``(size-weighted, token-mean)`` cosines of the pooled embeddings (module docstring, step 5).
    final: ``[T, N, C]`` final patch tokens."""
    flat = final.reshape(-1, final.shape[-1]).double()  # [T*N, C]
    handed_on = mean_by_group(flat, reduction.group.cpu(), reduction.num_kept)  # [M, C]
    sizes = reduction.group_sizes().cpu().double()[:, None]  # [M, 1]
    reference = flat.mean(0)
    weighted = (handed_on * sizes).sum(0) / sizes.sum()
    return (float(F.cosine_similarity(weighted, reference, dim=0)),
            float(F.cosine_similarity(handed_on.mean(0), reference, dim=0)))


def inspect_video(
    loaded: LoadedModel,
    x: Any,
    method: str = "holitom",
    ratio: float = 0.9,
    method_options: dict[str, Any] | None = None,
    num_frames: int = DEFAULT_FRAMES,
    feature_layer: int | None = None,
    limits: VideoLimits = VideoLimits(),
    features: FrameFeatures | None = None,
) -> VideoResult:
    """Inspect clip ``x`` (see :func:`is_video_input`) with the temporal ``method`` at ``ratio`` (fraction of
    the clip's tokens removed; see :mod:`tomviz.merge.temporal.methods` for each method's reading).
    ``feature_layer``: the encoder block whose tokens the method compares (default the middle one).
    ``features``: the encoder's outputs for these frames from an earlier call (skips the encoder)."""
    video = x if isinstance(x, Video) else read_video(list(x) if isinstance(x, np.ndarray) else x, num_frames, limits)
    request = MergeRequest(method=method, method_options=dict(method_options or {}), ratio=float(ratio),
                           place="clip", modality="video", frames=video.num_frames)
    clip_method = request.clip_method()
    feature_layer = middle_block(loaded.num_layers) if feature_layer is None else int(feature_layer)
    if features is None or features.tokens.shape[0] != video.num_frames or features.feature_layer != feature_layer:
        features = encode_frames(loaded, video.frames, feature_layer)
    meta = {"model": loaded.name, "family": "video", "method": clip_method.name, "ratio": float(ratio),
            "method_options": dict(request.method_options), "stages": [clip_method.name],
            "feature_layer": feature_layer, "schedule": [], "timestamps": list(video.timestamps)}
    if clip_method.in_encoder:
        trace, reduction, fidelity, token_mean, method_seconds = inspect_in_encoder(
            loaded, video, clip_method, float(ratio), features, meta)
    else:
        clip = ClipInputs(features.tokens, features.attention, features.frame_features, features.pixels, features.patch_size)
        start = time.perf_counter()
        reduction = clip_method.reduce(clip, float(ratio))
        method_seconds = time.perf_counter() - start
        fidelity, token_mean = pooled_fidelity(features.final, reduction)
        trace = clip_trace(reduction, features, meta)
    reduction.validate()
    frames = video.num_frames
    return VideoResult(trace=trace, video=video, reduction=reduction, features=features,
                       request=request, method_ms_per_frame=1000 * method_seconds / frames,
                       encoder_ms_per_frame=1000 * features.encoder_seconds / frames,
                       fidelity=fidelity, token_mean_fidelity=token_mean, in_encoder=clip_method.in_encoder)
