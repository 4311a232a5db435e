"""The temporal methods behind one interface, as the registry names them at the place ``"clip"``.

Every method takes the same leading arguments — a :class:`ClipInputs` and a ``ratio`` (the fraction of
the clip's tokens to remove, as for images) — and returns a :class:`TemporalReduction`. Options of one
method (HoliTom's τ, FastVID's segments, ...) are constructor arguments with the authors' defaults.
``ratio = 0`` removes nothing: every token stays alone (the identity reduction), for every method.

How ``ratio`` reaches each rule (its own amount, where the original has one):

* ``holitom``: ``RETAIN_RATIO = 1 - ratio``; ``fastvid``: retention ``1 - ratio``; ``frame_drop``,
  ``tome``, ``random``: keep ``1 - ratio`` of the frames / tokens.
* ``dycoke``: the share of each pruned frame removed (DyCoke's ``merging_ratio``, 0.7 in its scripts);
  about half the frames are pruned, so the clip loses roughly half of ``ratio``.
* ``framefusion``: the cap on the share merged, ``1 - cost`` (FrameFusion's cost 0.3 ↔ ratio 0.7); how
  much merges is decided by the similarity threshold.
* ``rlt``: RLT has no amount: its pixel threshold decides; any ``ratio > 0`` runs the rule.
* ``tempme``: runs inside the image encoder's layers (``in_encoder``), not on its output: the scale of the
  authors' schedule whose count removes the nearest fraction (:mod:`tomviz.merge.temporal.tempme`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from tomviz.merge import registry
from tomviz.merge.temporal.base import TemporalReduction, check_ratio, check_tokens
from tomviz.merge.temporal.baselines import (
    drop_frames,
    random_all_frames,
    tome_all_frames,
)
from tomviz.merge.temporal.dycoke import dycoke
from tomviz.merge.temporal.fastvid import fastvid
from tomviz.merge.temporal.framefusion import framefusion
from tomviz.merge.temporal.holitom import holitom
from tomviz.merge.temporal.rlt import rlt
from tomviz.merge.temporal.tempme import TempMeMerge


@dataclass(frozen=True)
class ClipInputs:
    """What a temporal method may read about a clip (T frames, N tokens per frame)."""

    tokens: torch.Tensor  # [T, N, C] per-frame tokens
    attention: torch.Tensor | None = None  # [T, N] importance of each token (HoliTom, FastVID)
    frame_features: torch.Tensor | None = None  # [T, C'] one feature per frame (FastVID's segmentation)
    pixels: torch.Tensor | None = None  # [T, 3, H, W] normalised pixels (RLT)
    patch_size: int = 14  # pixels per patch side (RLT)


def identity_reduction(tokens: torch.Tensor) -> TemporalReduction:
    """Every token of ``tokens`` ``[T, N, C]`` alone, in frame-major order."""
    num_frames, per_frame, _ = check_tokens(tokens)
    index = torch.arange(num_frames * per_frame, device=tokens.device)
    return TemporalReduction(tokens.reshape(num_frames * per_frame, -1), index, index.clone(), num_frames, per_frame)


class ClipMethod:
    """A temporal method: :meth:`reduce` runs its rule; ``ratio = 0`` is the identity for all."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    modalities: ClassVar[tuple[str, ...]] = ("video",)
    needs: ClassVar[tuple[str, ...]] = ()  # the optional ClipInputs fields the rule reads
    in_encoder: ClassVar[bool] = False  # True: merges inside the encoder's layers (encoder_method), not after

    def reduce(self, clip: ClipInputs, ratio: float) -> TemporalReduction:
        ratio = check_ratio("ratio", ratio)
        if ratio == 0.0:
            return identity_reduction(clip.tokens)
        missing = [field for field in self.needs if getattr(clip, field) is None]
        if missing:
            raise ValueError(f"{self.name} needs {', '.join(missing)} of the clip")
        return self.rule(clip, ratio)

    def rule(self, clip: ClipInputs, ratio: float) -> TemporalReduction:
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({options})"


class HoliTom(ClipMethod):
    name, label, needs = "holitom", "HoliTom (outer stage)", ("attention",)

    def __init__(self, tau: float = 0.8, beta: float = 0.6, k: int = 7, max_window: int = 1024):
        self.tau, self.beta, self.k, self.max_window = float(tau), float(beta), int(k), int(max_window)

    def rule(self, clip: ClipInputs, ratio: float) -> TemporalReduction:
        return holitom(clip.tokens, clip.attention, 1.0 - ratio, self.tau, self.beta, self.k, self.max_window)


class FastVID(ClipMethod):
    name, label, needs = "fastvid", "FastVID", ("attention", "frame_features")

    def __init__(self, segments: int = 8, tau: float = 0.9, context_share: float = 0.4, anchor_every: int = 4,
                 beta: float = 0.6):
        self.segments, self.tau, self.context_share = int(segments), float(tau), float(context_share)
        self.anchor_every, self.beta = int(anchor_every), float(beta)

    def rule(self, clip: ClipInputs, ratio: float) -> TemporalReduction:
        return fastvid(clip.tokens, clip.attention, clip.frame_features, 1.0 - ratio, self.segments, self.tau,
                       self.context_share, self.anchor_every, self.beta)


class DyCoke(ClipMethod):
    name, label = "dycoke", "DyCoke (pair pruning)"

    def rule(self, clip: ClipInputs, ratio: float) -> TemporalReduction:
        return dycoke(clip.tokens, ratio)


class FrameFusion(ClipMethod):
    name, label = "framefusion", "FrameFusion (first layer)"

    def __init__(self, similarity_threshold: float = 0.6):
        self.similarity_threshold = float(similarity_threshold)

    def rule(self, clip: ClipInputs, ratio: float) -> TemporalReduction:
        return framefusion(clip.tokens, self.similarity_threshold, cost=1.0 - ratio)


class RLT(ClipMethod):
    name, label, needs = "rlt", "RLT (static pixels)", ("pixels",)

    def __init__(self, threshold: float = 0.1, tubelet: int = 1):
        self.threshold, self.tubelet = float(threshold), int(tubelet)

    def rule(self, clip: ClipInputs, ratio: float) -> TemporalReduction:
        return rlt(clip.tokens, clip.pixels, clip.patch_size, self.tubelet, self.threshold)


class TempMe(ClipMethod):
    """TempMe: the frames go through the encoder as one batch, joined into clips layer by layer. ``scale``:
    the authors' amounts times ``scale`` (None: the scale that meets ``ratio``); the other options replace
    the scaled defaults (:class:`~tomviz.merge.temporal.tempme.TempMeSettings`)."""

    name, label = "tempme", "TempMe (inside the encoder)"
    in_encoder = True

    def __init__(self, scale: float | None = None, r_early: int | None = None, cross: float | None = None,
                 within: float | None = None, merge_layers: list[int] | None = None, groups: list[int] | None = None,
                 odd_join: bool | None = None):
        self.scale = None if scale is None else float(scale)
        given = dict(r_early=r_early, cross=cross, within=within, merge_layers=merge_layers, groups=groups,
                     odd_join=odd_join)
        self.overrides = {key: tuple(value) if isinstance(value, (list, tuple)) else value
                          for key, value in given.items() if value is not None}

    def encoder_method(self, ratio: float) -> TempMeMerge:
        """The engine's method for a clip at ``ratio``."""
        return TempMeMerge(ratio=check_ratio("ratio", ratio), scale=self.scale, **self.overrides)

    def rule(self, clip: ClipInputs, ratio: float) -> TemporalReduction:
        raise ValueError("tempme merges inside the encoder's layers: run it on a clip with tomviz.inspect")


class FrameDrop(ClipMethod):
    name, label = "frame_drop", "Frame dropping (baseline)"

    def rule(self, clip: ClipInputs, ratio: float) -> TemporalReduction:
        return drop_frames(clip.tokens, 1.0 - ratio)


class AllFrames(ClipMethod):
    """ToMe's (``"tome"``) or the random (``"random"``) bipartite matching over every frame's tokens at once."""

    label = "over all frames"

    def __init__(self, rule_name: str = "tome", seed: int = 0):
        if rule_name not in ("tome", "random"):
            raise ValueError(f"no all-frames version of {rule_name!r}: use 'tome' or 'random'")
        self.rule_name, self.seed = rule_name, int(seed)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.rule_name

    def rule(self, clip: ClipInputs, ratio: float) -> TemporalReduction:
        if self.rule_name == "tome":
            return tome_all_frames(clip.tokens, 1.0 - ratio)
        return random_all_frames(clip.tokens, 1.0 - ratio, self.seed)


def build_clip_method(cls: type, name: str, options: dict[str, Any]) -> ClipMethod:
    """An instance of the registry's class for ``name`` at the clip; an encoder rule (ToMe, random) runs
    over all frames (:class:`AllFrames`). ValueError for options the method does not take."""
    try:
        if issubclass(cls, ClipMethod):
            return cls(**options)
        return AllFrames(name, **options)
    except TypeError as error:
        raise ValueError(f"bad options for {name}: {error}") from error


def get_clip_method(name: str | ClipMethod, **options: Any) -> ClipMethod:
    """The method ``name`` on a clip's frames (registry place ``"clip"``) with its defaults there, then
    ``options``; ValueError for a name that does not run on a clip."""
    if isinstance(name, ClipMethod):
        return name
    entry = registry.entry(name, "clip")
    return build_clip_method(entry.load(), name, {**entry.defaults.get("clip", {}), **dict(options)})
