"""Inspect a clip with a video encoder (VideoMAE): token merging over space-time tokens inside the encoder.

``inspect_encoder_clip(loaded, "clip.mp4", method="tome", ratio=0.5)`` is what the Video tab and
``python -m tomviz inspect clip.mp4 --model MCG-NJU/videomae-small-finetuned-kinetics`` run:

1. the clip is decoded and sampled to the model's ``num_frames`` (16 for the published VideoMAEs) under the
   caller's :class:`~tomviz.inputs.video.VideoLimits` (checked from the header before decoding);
2. one traced forward under the merge request (:mod:`tomviz.models.videomae`: ToMe and the other encoder
   methods between attention and MLP of every block, over all ``T / tubelet_size * rows * cols`` tokens at
   once, 1568 at 16 x 224²); the trace has one record per encoder layer, ``meta["frame_grid"] =
   (T / tubelet_size, rows, cols)`` (time-step-major) and ``meta["tubelet_size"]``: input token
   ``(k, row, col)`` covers the patch at ``(row, col)`` of frames ``k * tubelet_size ..`` ``(k + 1) *
   tubelet_size - 1``;
3. speed and fidelity as everywhere in tomviz (:mod:`tomviz.measure`): an untraced merged and an unmerged
   forward of the same pixels, timed after the traced one (which warms up), their analytic GFLOPs, and the
   cosine of the final embeddings (the logits for a classifier, with top-1 agreement).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tomviz.fidelity import top_labels
from tomviz.inputs.video import Video, VideoLimits, read_video
from tomviz.measure import compare, measured_forward
from tomviz.merge.engine import MergeConfig
from tomviz.merge.request import MergeRequest
from tomviz.models.loading import LoadedModel
from tomviz.models.videomae import sample_index
from tomviz.trace import Trace


@dataclass
class EncoderClipResult:
    """One clip through a video encoder."""

    trace: Trace  # one record per encoder layer; meta["frame_grid"] = (T / tubelet, rows, cols), meta["tubelet_size"]
    video: Video  # the frames the model saw [T, H, W, 3] (T = the model's num_frames)
    request: MergeRequest
    seconds: float  # the merged forward (untraced)
    base_seconds: float  # the unmerged forward
    gflops: float  # analytic GFLOPs of the encoder layers, merged
    base_gflops: float
    cosine: float  # final embedding (logits for a classifier), merged vs unmerged
    top1_agree: bool | None  # classifiers: the top-1 class is unchanged
    labels: list[tuple[str, float]] | None  # classifiers: the merged run's top classes

    def token_counts(self) -> list[int]:
        """Tokens entering the first layer, then after each layer: ``[N0, N_1, ..., N_L]``."""
        return self.trace.token_counts()

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest (the CLI's stats.json, the app's text)."""
        steps, rows, cols = self.trace.frame_grid
        return {
            "model": self.trace.meta.get("model"), "method": self.trace.meta.get("method"), "ratio": self.request.ratio,
            "method_options": dict(self.request.method_options), "frame_grid": [steps, rows, cols],
            "tubelet_size": int(self.trace.meta.get("tubelet_size", 1)), "frames": self.video.num_frames,
            "timestamps": list(self.video.timestamps), "token_counts": self.token_counts(),
            "ms_per_clip": 1000 * self.seconds, "base_ms_per_clip": 1000 * self.base_seconds,
            "speedup": self.base_seconds / self.seconds if self.seconds > 0 else None,
            "gflops": self.gflops, "base_gflops": self.base_gflops,
            "fidelity_cosine": self.cosine, "top1_agree": self.top1_agree, "top_labels": self.labels,
        }


def model_frames(loaded: LoadedModel, video: Video) -> Video:
    """``video`` sampled to the ``num_frames`` the model takes (uniformly; a short clip repeats frames)."""
    index = sample_index(video.num_frames, int(loaded.backbone.config.num_frames))
    return Video(frames=video.frames[index], timestamps=tuple(video.timestamps[i] for i in index), fps=video.fps,
                 source_frames=video.source_frames, indices=tuple(video.indices[i] for i in index))


def inspect_encoder_clip(loaded: LoadedModel, x: Any, method: str = "tome", ratio: float = 0.5,
                         method_options: dict[str, Any] | None = None, limits: VideoLimits = VideoLimits()) -> EncoderClipResult:
    """Clip ``x`` (a file, a folder or list of frames, a ``[T, H, W, 3]`` array, a :class:`Video`) through the
    video encoder ``loaded`` with the encoder ``method`` at ``ratio`` (fraction of the tokens removed by the
    last layer). ValueError for a model that is not a video encoder, or a method that does not run here."""
    if loaded.modality != "video":
        raise ValueError(f"{loaded.name} is not a video encoder (VideoMAE): its clips go through tomviz.inspect")
    if not isinstance(x, Video):
        x = read_video(list(x) if isinstance(x, np.ndarray) else x, int(loaded.backbone.config.num_frames), limits)
    video = model_frames(loaded, x)
    request = MergeRequest(method=method, method_options=dict(method_options or {}), ratio=float(ratio))
    inputs = loaded.prepare(video)
    config = request.config(trace=True, extra=inputs.method_extra())
    outputs, state = loaded.run(inputs, config)  # traced; also the warm-up of the timed forwards below
    base = measured_forward(loaded, inputs, MergeConfig.unmerged(extra=inputs.method_extra()))
    merged = measured_forward(loaded, inputs, config)
    metrics = compare(merged, base)[0]
    trace = state.trace()
    trace.meta["timestamps"] = list(video.timestamps)  # one per frame the model saw
    return EncoderClipResult(trace=trace, video=video, request=request, seconds=merged.seconds, base_seconds=base.seconds,
                             gflops=metrics.gflops, base_gflops=metrics.base_gflops, cosine=metrics.agreement.cosine,
                             top1_agree=metrics.agreement.top1_agree, labels=top_labels(outputs, loaded.labels))
