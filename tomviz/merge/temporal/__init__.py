"""Temporal token reduction for clips: pure tensor math over per-frame tokens ``[T, N, C]``.

Every method returns a :class:`TemporalReduction`: the kept tokens and the group of every input token
(frame-major index ``t * N + n``; ``PRUNED`` = -1 when dropped). :mod:`tomviz.merge.temporal.methods` puts them
behind one interface, as the registry names them at the place ``"clip"`` (:func:`get_clip_method`).
"""
from __future__ import annotations

from tomviz.merge.temporal.base import TemporalReduction
from tomviz.merge.temporal.baselines import drop_frames, random_all_frames, tome_all_frames
from tomviz.merge.temporal.dycoke import dycoke
from tomviz.merge.temporal.fastvid import fastvid
from tomviz.merge.temporal.framefusion import framefusion
from tomviz.merge.temporal.holitom import holitom
from tomviz.merge.temporal.methods import ClipInputs, ClipMethod, get_clip_method
from tomviz.merge.temporal.rlt import imagenet_normalize, rlt

__all__ = [
    "ClipInputs", "ClipMethod", "TemporalReduction", "get_clip_method", "drop_frames", "dycoke", "fastvid", "framefusion", "holitom", "imagenet_normalize",
    "random_all_frames", "rlt", "tome_all_frames",
]
