"""One merge request: what a caller asks for, from any entry point, and the one place that turns it into
the engine's :class:`~tomviz.merge.engine.MergeConfig`.

The API's keywords (:meth:`MergeRequest.from_kwargs`), the command line's flags
(:meth:`MergeRequest.from_flags`), a benchmark's TOML settings and a share link's parameters (both
through :mod:`tomviz.merge.checks`) all end here, so a field, its default and its check exist once.
The app's, the benchmark's and the VLM's settings types hold one of these
(``analysis.Settings.request``, ``bench.spec.Setting.request``, ``vlm.Reduction.request``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tomviz.merge import get_method, registry
from tomviz.merge.base import MergeMethod
from tomviz.merge.checks import METHOD_PLACES, check_place, check_ratio, check_schedule_name, renamed_mode
from tomviz.merge.engine import MergeConfig
from tomviz.merge.temporal.methods import ClipMethod, get_clip_method


@dataclass
class MergeRequest:
    """How to merge, as asked (names and numbers, no tensors); :meth:`config` makes the engine's config."""

    method: str | MergeMethod = "tome"  # a registry name (tomviz.merge.registry) or a method instance
    method_options: dict[str, Any] = field(default_factory=dict)  # the method's own options, e.g. {"threshold": 0.9}
    ratio: float | None = None  # fraction of the input tokens removed by the last layer (0..MAX_RATIO)
    r: int | tuple[int, int] | list[int] | None = None  # or tokens removed per layer: an int, (r, -1) or a list
    schedule: str = "constant"  # how a ratio (or a plain int r) spreads over the layers: "constant" | "decreasing"
    prop_attn: bool = True  # proportional attention: add log(size) to every attention logit
    place: str = "encoder"  # where the method runs: "encoder" | "boundary" | "llm" (vision-language models)
    modality: str | None = None  # the input the request is for ("image" | "text" | "video"); None: any
    frames: int | None = None  # frames of a video input; None: not a video (place "clip": the clip's frames)

    def check(self) -> "MergeRequest":
        """Itself; ValueError (:class:`~tomviz.merge.checks.ScheduleError` for the amounts) with the message
        users read, for a place, ratio, schedule, method name or modality that cannot be run."""
        check_place(self.place, METHOD_PLACES)
        if self.ratio is not None:
            check_ratio(self.ratio)
        check_schedule_name(self.schedule)
        method = registry.entry(self.method, self.place).load() if isinstance(self.method, str) else self.method
        modalities = ("video",) if self.place == "clip" else getattr(method, "modalities", None)
        if self.modality is not None and modalities is not None and self.modality not in modalities:
            raise ValueError(f"{method.name} does not run on {self.modality} inputs: it takes {' or '.join(modalities)}")
        return self

    def build_method(self) -> MergeMethod:
        """The encoder method instance; ValueError for an unknown name or options it does not take."""
        try:
            return get_method(self.method, **self.method_options)
        except TypeError as err:
            raise ValueError(f"bad options for {self.method}: {err}") from err

    def clip_method(self) -> ClipMethod:
        """The temporal method instance (place ``"clip"``); ValueError for an unknown name or bad options."""
        self.check()
        return get_clip_method(self.method, **self.method_options)

    def config(self, trace: bool = False, extra: dict[str, Any] | None = None, **flags: Any) -> MergeConfig:
        """The engine's config for one call in an encoder (``flags``: the other :class:`MergeConfig` fields)."""
        self.check()
        ratio = None if self.ratio is None else float(self.ratio)
        return MergeConfig(method=self.build_method(), r=self.r, ratio=ratio, schedule=self.schedule,
                           prop_attn=bool(self.prop_attn), trace=trace, extra=dict(extra or {}), **flags)

    @classmethod
    def from_kwargs(cls, where: str, method: str | MergeMethod = "tome", ratio: float | None = None,
                    r: Any = None, schedule: str = "constant", prop_attn: bool = True,
                    method_options: dict[str, Any] | None = None, mode: str | None = None, **fields: Any) -> "MergeRequest":
        """From the API's keywords (``inspect``, ``patch``, ``sweep``: ``where``): ``mode`` is ``schedule``'s old
        name (deprecated); neither ``ratio`` nor ``r``: nothing is removed (``r=0``)."""
        schedule = renamed_mode(schedule, mode, where)
        if r is None and ratio is None:
            r = 0
        return cls(method=method, method_options=dict(method_options or {}), ratio=ratio, r=r, schedule=schedule,
                   prop_attn=prop_attn, **fields)

    @classmethod
    def from_flags(cls, args: Any, method_options: dict[str, Any] | None = None) -> "MergeRequest":
        """From the command line's flags (an ``argparse.Namespace``): ``--r`` wins over ``--ratio``."""
        r = getattr(args, "r", None)
        return cls(method=args.method, method_options=dict(method_options or {}), r=r,
                   ratio=None if r is not None else getattr(args, "ratio", None), schedule=args.schedule)

    def keywords(self) -> dict[str, Any]:
        """The API's keywords for this request (``tomviz.inspect(model, x, **request.keywords())``)."""
        return {"method": self.method, "ratio": self.ratio, "r": self.r, "schedule": self.schedule,
                "prop_attn": self.prop_attn, "method_options": dict(self.method_options)}
