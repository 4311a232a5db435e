"""The checks of a merge request's values, with the messages users read (the app, the CLI, links, the API).

No torch here: the command line parses its flags with these names before anything heavy loads.
Every entry point (API keywords, CLI flags, TOML keys, share-link parameters) calls these functions,
so a bad value reads the same everywhere.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

MAX_RATIO = 0.95  # the largest merge ratio asked for: a fraction of the input tokens removed by the last layer
SCHEDULES = ("constant", "decreasing")  # the named schedules: how a ratio (or a plain int r) spreads over the layers
PLACES = ("encoder", "boundary", "llm")  # where a method runs: in an encoder, on a VLM's visual tokens, inside its LLM
CLIP = "clip"  # and on a clip's per-frame tokens at once (the temporal methods, tomviz.merge.temporal)
METHOD_PLACES = PLACES + (CLIP,)  # every place a registered method may run
REMOVED_IN = "tomviz 0.2.0"  # the release that removes the deprecated names


class ScheduleError(ValueError):
    """A schedule that cannot be run as asked."""


def check_ratio(ratio: Any) -> float:
    """``ratio`` as a float; :class:`ScheduleError` unless it is a number in ``[0, MAX_RATIO]``."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= MAX_RATIO):
        raise ScheduleError(f"the merge ratio must be between 0 and {MAX_RATIO}, got {ratio}")
    return value


def check_schedule_name(schedule: str) -> str:
    """``schedule``; :class:`ScheduleError` unless it is one of ``SCHEDULES``."""
    if schedule not in SCHEDULES:
        raise ScheduleError(f"unknown schedule {schedule!r}: use 'constant' or 'decreasing'")
    return schedule


def check_place(place: str, allowed: tuple[str, ...] = PLACES) -> str:
    """``place``; ValueError unless it is one of ``allowed``."""
    if place not in allowed:
        raise ValueError(f"unknown place {place!r}: choose one of {', '.join(allowed)}")
    return place


def deprecated(old: str, new: str, stacklevel: int = 3) -> None:
    """A DeprecationWarning: ``old`` is renamed ``new`` and goes in ``REMOVED_IN``."""
    warnings.warn(f"{old} is renamed {new}; {old} will be removed in {REMOVED_IN}", DeprecationWarning,
                  stacklevel=stacklevel + 1)


def renamed_mode(schedule: str | None, mode: str | None, where: str) -> str | None:
    """``schedule``, or the value of the old keyword ``mode`` (renamed ``schedule``) with a DeprecationWarning.
    ``where``: the function (``"inspect"``), or a file's name ending in ``.toml`` whose key it was."""
    if mode is None:
        return schedule
    if where.endswith(".toml"):
        deprecated(f"{where}: the key 'mode'", "'schedule'", stacklevel=3)
    else:
        deprecated(f"{where}(mode=...)", f"{where}(schedule=...)", stacklevel=3)
    return mode
