"""Clips in a benchmark: every temporal method × ratio on each clip, as result rows in the usual columns.

With an image model (default the embedded DINOv2-S/14 on each frame), a clip of the input folder is decoded
under the app's upload bounds (:data:`tomviz.inputs.video.UPLOAD_LIMITS`, checked from the header before any
frame is decoded), sampled to ``BenchSpec.frames`` frames and encoded once; each setting then runs its
temporal method (registry place ``clip``, :func:`tomviz.video.inspect_video`) on those features. A row holds:

* ``tokens_in`` = frames × patches, ``tokens_out`` = the tokens the method hands on;
* ``cosine`` = the pooled-embedding fidelity (size-weighted, :func:`tomviz.video.pooled_fidelity`);
* ``method_ms_per_frame`` = the method's own cost, and ``frames``;
* ``seconds`` = the per-frame encoder plus the method for the whole clip, ``base_seconds`` = the encoder
  alone, so the summary's ``speedup`` (≤ 1) is what running the method costs on top of the encoder; the
  stage that consumes the tokens gains in proportion to ``tokens_out / tokens_in`` (BENCHMARKS.md);
* no GFLOPs (the consumer is not part of the benchmark).

A video encoder (VideoMAE) takes its clips through the ordinary encoder rows instead (its ``prepare`` is
given the frames read here under the same bounds: :func:`read_clip_for_encoder`).
"""
from __future__ import annotations

from typing import Any, Callable

from tomviz.bench.spec import BenchSpec, Setting
from tomviz.inputs.video import UPLOAD_LIMITS, Video, read_video
from tomviz.models.frames import encode_frames, middle_block
from tomviz.models.loading import LoadedModel
from tomviz.video import inspect_video

Row = dict[str, Any]


def read_clip_for_encoder(loaded: LoadedModel, path: str) -> Video:
    """A clip for a video encoder: its ``num_frames``, under the upload bounds."""
    return read_video(path, int(loaded.backbone.config.num_frames), UPLOAD_LIMITS)


def clip_rows(loaded: LoadedModel, spec: BenchSpec, path: str, row: Callable[..., Row],
              message: Callable[[BaseException], str]) -> list[Row]:
    """One row per setting of ``spec`` for the clip at ``path`` (``row(setting, **values)`` makes a row with the
    item's and setting's columns; ``message(err)`` words an error). An unreadable clip or a setting that
    cannot run gives rows with ``error`` set."""
    try:
        video = read_video(path, spec.frames, UPLOAD_LIMITS)
        features = encode_frames(loaded, video.frames, middle_block(loaded.num_layers))
    except Exception as err:  # noqa: BLE001 - any unreadable clip is reported on its rows
        return [row(setting, error=f"input: {message(err)}") for setting in spec.settings]
    return [setting_row(loaded, spec, setting, video, features, row, message) for setting in spec.settings]


def setting_row(loaded: LoadedModel, spec: BenchSpec, setting: Setting, video: Video, features: Any,
                row: Callable[..., Row], message: Callable[[BaseException], str]) -> Row:
    """The row of one temporal setting on one encoded clip."""
    try:
        if setting.ratio is None:
            raise ValueError("a clip takes ratios (the fraction of its tokens removed), not r")
        result = inspect_video(loaded, video, method=setting.method, ratio=setting.ratio,
                               method_options=spec.method_options.get(setting.method), features=features)
    except Exception as err:  # noqa: BLE001 - unknown method, bad options, a method's own error
        return row(setting, frames=video.num_frames, error=message(err))
    counts = result.token_counts()
    method_seconds = result.method_ms_per_frame * video.num_frames / 1000
    return row(setting, tokens_in=counts[0], tokens_out=counts[-1], cosine=result.fidelity, frames=video.num_frames,
               method_ms_per_frame=result.method_ms_per_frame, seconds=features.encoder_seconds + method_seconds,
               base_seconds=features.encoder_seconds, batch_size=1)
