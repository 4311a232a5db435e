"""What the tabs open on: a real result for every tab, offline, before any click.

Each example is computed once per server process, on the first page load that asks for it (start-up stays
fast), and then handed to every visitor; a visitor's own state gets a copy. The page-load events skip the
queue (after the first they are cheap, and a visitor's share of the queue stays for its own requests); the
first computation is serialised by a lock, and the background grids of ratios (:mod:`tomviz.ratio_grid`)
wait while it runs the model, as they do for a visitor's request.
"""
from __future__ import annotations

import copy
import functools
import threading
from typing import Any, Callable, TypeVar

from tomviz import ratio_grid
from tomviz.ui.common import ASSETS

T = TypeVar("T")
EXAMPLE_RESULTS = ASSETS / "bench_example" / "summary.json"  # `python -m tomviz bench assets ...` (its meta: the command)


def computed_once(compute: Callable[[], T]) -> Callable[[], T]:
    """``compute()`` run once per process (concurrent first callers wait for the one run; an error is not
    kept, the next caller tries again), as a visitor's request for the model. ``.forget()`` drops the
    result (tests)."""
    lock, kept = threading.Lock(), []

    @functools.wraps(compute)
    def once() -> T:
        with lock:
            if not kept:
                with ratio_grid.FOREGROUND:
                    kept.append(compute())
            return kept[0]

    once.forget = kept.clear  # type: ignore[attr-defined]
    return once


def own_copy(value: Any) -> Any:
    """A visitor's own copy of a shared example's state (handlers never change it, but a copy is cheap)."""
    return copy.deepcopy(value)
