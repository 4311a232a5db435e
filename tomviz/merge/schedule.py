"""Merge schedules: how many tokens each layer removes.

A schedule is asked for by name (``schedule="constant"`` or ``"decreasing"``: how a ratio or
a plain int r spreads over the layers, ``SCHEDULES``) or given per layer; either way it resolves
to one list of ints, one per layer, which the trace keeps as ``meta["schedule"]``. The ways to ask:

* ``r=13``: the same r in every layer (ToMe's constant schedule; as in ToMe, a
  layer with too few tokens left removes only what it can — the trace's
  ``meta["schedule"]`` holds what each layer actually removed);
* ``r=(13, -1)``: ToMe's "decreasing" schedule, linear from 2r at the first
  layer to 0 at the last (inflection -1);
* ``r=[...]``: an explicit per-layer list;
* ``ratio=0.5``: the fraction of the input tokens (protected ones excluded)
  removed by the end of the last layer. See :func:`schedule_from_ratio`.

Every layer's r is limited by what bipartite matching can remove: half of the
unprotected tokens entering that layer. A ratio, a per-layer list or a decreasing
schedule beyond that is reported with :class:`ScheduleError`, never clipped.
"""
from __future__ import annotations

from typing import Sequence

from tomviz.merge.base import max_removable
from tomviz.merge.checks import (  # noqa: F401 - re-exported: the checks live in one module
    MAX_RATIO, SCHEDULES, ScheduleError, check_ratio, check_schedule_name, renamed_mode,
)


def token_counts(num_tokens: int, schedule: Sequence[int]) -> list[int]:
    """Token count after each layer. ``[N_0 - r_0, N_0 - r_0 - r_1, ...]``."""
    counts, n = [], num_tokens
    for r in schedule:
        n -= r
        counts.append(n)
    return counts


def check_schedule(schedule: Sequence[int], num_tokens: int, num_protected: int) -> list[int]:
    """Validate a per-layer schedule against the 50 %-per-layer limit; returns it as a list."""
    n = num_tokens
    out = []
    for layer, r in enumerate(schedule):
        r = int(r)
        if r < 0:
            raise ScheduleError(f"layer {layer}: r={r} is negative")
        limit = max_removable(n, num_protected)
        if r > limit:
            raise ScheduleError(
                f"layer {layer}: r={r} but only {limit} of the {n} tokens entering it can merge "
                f"(at most half of the {n - num_protected} unprotected tokens per layer)"
            )
        out.append(r)
        n -= r
    return out


def decreasing_schedule(r: int, num_layers: int) -> list[int]:
    """ToMe's (r, -1): linear from 2r at the first layer to 0 at the last, rounded per layer."""
    if num_layers == 1:
        return [int(r)]
    return [int(round(2 * r * (1 - i / (num_layers - 1)))) for i in range(num_layers)]


def resolve_schedule(
    r: int | tuple[int, int] | Sequence[int] | None,
    ratio: float | None,
    num_layers: int,
    num_tokens: int,
    num_protected: int,
    schedule: str = "constant",
) -> list[int]:
    """Turn any of the accepted forms into a checked per-layer list; ``schedule`` names how a ratio or
    a plain int ``r`` spreads over the layers (``SCHEDULES``)."""
    if ratio is not None and r is not None:
        raise ScheduleError("give either r or ratio, not both")
    if ratio is not None:
        return schedule_from_ratio(ratio, num_layers, num_tokens, num_protected, schedule)
    check_schedule_name(schedule)
    if r is None:
        per_layer = [0] * num_layers
    elif isinstance(r, tuple) and len(r) == 2 and r[1] == -1:
        per_layer = decreasing_schedule(r[0], num_layers)
    elif isinstance(r, (list, tuple)):
        if len(r) != num_layers:
            raise ScheduleError(f"the schedule has {len(r)} entries but the model has {num_layers} layers")
        per_layer = list(r)
    elif schedule == "constant":
        return clipped_constant_schedule(int(r), num_layers, num_tokens, num_protected)
    else:
        per_layer = decreasing_schedule(int(r), num_layers)
    return check_schedule(per_layer, num_tokens, num_protected)


def clipped_constant_schedule(r: int, num_layers: int, num_tokens: int, num_protected: int) -> list[int]:
    """ToMe's constant r: each layer removes ``min(r, half of its unprotected tokens)``."""
    if r < 0:
        raise ScheduleError(f"r={r} is negative")
    schedule, n = [], num_tokens
    for _ in range(num_layers):
        schedule.append(min(r, max_removable(n, num_protected)))
        n -= schedule[-1]
    return schedule


def schedule_from_ratio(
    ratio: float, num_layers: int, num_tokens: int, num_protected: int, schedule: str = "constant"
) -> list[int]:
    """Map a merge ratio to a per-layer schedule.

    ``ratio`` is the fraction of the unprotected input tokens removed by the end of
    the last layer: ``R = round(ratio * (N - P))`` tokens in total. They are spread
    over the layers by weight — equal weights (``schedule="constant"``) or linearly
    decreasing ones, ``2, ..., 0`` as in ToMe's (r, -1) (``schedule="decreasing"``) —
    each layer taking its weight's share of what is left, rounded, so the values sum to
    exactly R. A layer never exceeds its limit (half its unprotected tokens); the
    excess moves to layers (a layer takes more than its share only when the later layers
    could not finish otherwise). If R cannot be reached at all, a
    :class:`ScheduleError` says what the maximum is.
    """
    check_ratio(ratio)
    check_schedule_name(schedule)
    mergeable = num_tokens - num_protected
    total = int(round(ratio * mergeable))
    if schedule == "constant" or num_layers == 1:
        weights = [1.0] * num_layers
    else:
        weights = [1 - i / (num_layers - 1) for i in range(num_layers)]
    most = max_total_removable(num_layers, num_tokens, num_protected)
    if total > most:
        raise ScheduleError(
            f"ratio {ratio} asks to remove {total} of {mergeable} tokens in {num_layers} layers, but merging at "
            f"most half the tokens per layer removes at most {most} (ratio {most / max(mergeable, 1):.3f})"
        )
    per_layer, remaining, n = [], total, num_tokens
    for layer in range(num_layers):
        rest = num_layers - layer - 1
        weight_left = sum(weights[layer:])
        want = remaining if weight_left <= 0 else int(round(remaining * weights[layer] / weight_left))
        high = min(max_removable(n, num_protected), remaining)
        low = 0  # the least this layer must remove so that the later layers can still finish
        while low < high and low + max_total_removable(rest, n - low, num_protected) < remaining:
            low += 1
        r = min(max(want, low), high)
        per_layer.append(r)
        remaining -= r
        n -= r
    return per_layer


def max_total_removable(num_layers: int, num_tokens: int, num_protected: int) -> int:
    n = num_tokens
    for _ in range(num_layers):
        n -= max_removable(n, num_protected)
    return num_tokens - n
