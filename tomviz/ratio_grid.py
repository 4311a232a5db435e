"""The instant ratio: after an input is inspected, the analyses of a grid of ratios are computed in the
background, so that moving the ratio slider answers from memory instead of running the model.

One :class:`GridStore` serves the whole server. Each visitor (a Gradio session) has at most one grid
at a time: asking for a grid with other settings (another input, model, method, schedule or
proportional attention) cancels the visitor's previous one. A single worker thread computes the grids
of all visitors one forward at a time, round-robin between visitors (no visitor's grid waits for
another's to finish), and only while no visitor's own request is running the model
(:class:`ForegroundGate`): background work never delays a request someone is waiting for.

What a grid holds: one :class:`~tomviz.analysis.Analysis` per ratio without its photo (the session
keeps the photo once), i.e. a trace (for DINOv2-S at 224 px: 12 layers × 257 int32 ids + sizes ≈ 26 KB
with the CLS attention), the fidelity and the speed report: about 30 KB per ratio, 0.6 MB for the
20 ratios 0, 0.05, …, ``MAX_RATIO`` (``GridStore.nbytes`` measures it).
"""
from __future__ import annotations

import atexit
import functools
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from tomviz.analysis import Analysis, Settings, analyse
from tomviz.merge.schedule import MAX_RATIO

GRID_STEP = 0.05  # the grid's spacing in ratio
MAX_GRIDS = 64  # grids kept server-wide (least recently used dropped first)
MAX_GRIDS_PER_CLIENT = 3  # grids one client address may hold: opening many sessions does not evict the others


def grid_ratios(max_ratio: float = MAX_RATIO, step: float = GRID_STEP) -> list[float]:
    """``[0, step, 2·step, …]`` up to ``max_ratio`` (rounded to 1e-6, so a slider value matches exactly)."""
    return [round(i * step, 6) for i in range(int(round(max_ratio / step)) + 1)]


def grid_key(x: Any, settings: Settings) -> tuple:
    """What a grid depends on besides the ratio: the input's identity (an uploaded file's path, which Gradio
    derives from the file's content, or the text) and every setting but the ratio."""
    return (str(x), settings.model, settings.method, settings.schedule, bool(settings.prop_attn))


class ForegroundGate:
    """Counts the visitors' model requests in progress; background work waits until there are none."""

    def __init__(self) -> None:
        self._active = 0
        self._idle = threading.Condition()

    def __enter__(self) -> "ForegroundGate":
        with self._idle:
            self._active += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def wait_idle(self, stop: threading.Event, poll_s: float = 0.05) -> bool:
        """Block until no foreground request runs (True) or ``stop`` is set (False)."""
        with self._idle:
            while self._active > 0:
                if stop.is_set():
                    return False
                self._idle.wait(poll_s)
        return not stop.is_set()


FOREGROUND = ForegroundGate()


def foreground(handler: Callable) -> Callable:
    """``handler`` as a visitor's request for the model: background grid work waits while it runs (for the
    tabs' other model-running handlers; Gradio reads the signature of the original)."""
    @functools.wraps(handler)
    def run(*args: Any, **kwargs: Any) -> Any:
        with FOREGROUND:
            return handler(*args, **kwargs)

    return run


@dataclass
class Grid:
    """The analyses of one input and setting at every grid ratio, filled in by the worker."""

    key: tuple
    client: str
    x: Any  # the input, held until the grid is complete or cancelled
    settings: Settings  # the settings (the ratio field is replaced per grid point)
    modality: str | None
    reference: Any  # the unmerged run of the input (analysis.Reference), shared by every grid point
    ratios: list[float]
    results: dict[float, Analysis] = field(default_factory=dict)
    errors: dict[float, str] = field(default_factory=dict)  # ratios the method cannot reach, and why
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None  # time.monotonic() when every ratio was done

    @property
    def pending(self) -> list[float]:
        return [r for r in self.ratios if r not in self.results and r not in self.errors]

    @property
    def ready(self) -> bool:
        return not self.pending


class GridStore:
    """Every visitor's grid, and the one worker thread that fills them (started on first use)."""

    def __init__(self, compute: Callable[..., Analysis] = analyse, gate: ForegroundGate = FOREGROUND,
                 max_grids: int = MAX_GRIDS, per_client: int = MAX_GRIDS_PER_CLIENT) -> None:
        self._compute, self._gate = compute, gate
        self._max_grids, self._per_client = max_grids, per_client
        self._grids: OrderedDict[str, Grid] = OrderedDict()  # visitor → grid, least recently used first
        self._queue: deque[Grid] = deque()  # grids with ratios still to compute, round-robin
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    # -- what the handlers call ------------------------------------------------------------------
    def start(self, visitor: str, client: str, x: Any, analysis: Analysis, modality: str | None = None) -> Grid:
        """Make sure ``visitor`` has the grid of ``x`` under ``analysis.settings`` (any ratio), with
        ``analysis`` as its first point; a grid with other settings is cancelled and replaced."""
        key = grid_key(x, analysis.settings)
        with self._lock:
            grid = self._grids.get(visitor)
            if grid is None or grid.key != key or grid.cancelled.is_set():
                if grid is not None:
                    grid.cancelled.set()
                grid = Grid(key=key, client=client, x=x, settings=analysis.settings, modality=modality,
                            reference=analysis.reference, ratios=grid_ratios())
                self._grids[visitor] = grid
                self._evict(visitor, client)
                self._queue.append(grid)
            self._grids.move_to_end(visitor)
            ratio = round(float(analysis.settings.ratio), 6)
            if ratio in grid.ratios and ratio not in grid.results:
                grid.results[ratio] = self._stored(analysis)
            self._ensure_worker()
        self._wake.set()
        return grid

    def lookup(self, visitor: str, x: Any, settings: Settings) -> Analysis | None:
        """The stored analysis of ``x`` under ``settings`` if ``visitor``'s grid has it (no photo: the
        caller attaches its own), else None."""
        with self._lock:
            grid = self._grids.get(visitor)
            if grid is None or grid.key != grid_key(x, settings):
                return None
            self._grids.move_to_end(visitor)
            return grid.results.get(round(float(settings.ratio), 6))

    def cancel(self, visitor: str) -> None:
        with self._lock:
            grid = self._grids.pop(visitor, None)
        if grid is not None:
            grid.cancelled.set()

    def visitors(self) -> list[str]:
        """Every visitor with a grid, least recently used first."""
        with self._lock:
            return list(self._grids)

    def grid(self, visitor: str) -> Grid | None:
        with self._lock:
            return self._grids.get(visitor)

    def nbytes(self, visitor: str) -> int:
        """Bytes held by ``visitor``'s grid: its traces' arrays (the rest is a few hundred bytes a ratio)."""
        grid = self.grid(visitor)
        if grid is None:
            return 0
        return sum(a.trace.nbytes for a in list(grid.results.values()))

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the worker and wait up to ``timeout_s`` for the ratio it is computing; grids are dropped.
        Runs at interpreter exit too: a daemon thread still inside torch when the interpreter finalises
        aborts the process ("terminate called without an active exception")."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            for grid in self._grids.values():
                grid.cancelled.set()
            self._grids.clear()
            self._queue.clear()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout_s)

    # -- inside ---------------------------------------------------------------------------------
    @staticmethod
    def _stored(analysis: Analysis) -> Analysis:
        return replace(analysis, image=None)

    def _evict(self, visitor: str, client: str) -> None:
        """Drop the oldest grids of ``client`` beyond its share, then the oldest overall beyond the cap."""
        mine = [v for v, g in self._grids.items() if g.client == client and v != visitor]
        for old in mine[: max(0, len(mine) + 1 - self._per_client)]:
            self._grids.pop(old).cancelled.set()
        while len(self._grids) > self._max_grids:
            _, old = self._grids.popitem(last=False)
            old.cancelled.set()

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run, name="tomviz-ratio-grid", daemon=True)
            self._worker.start()

    def _next(self) -> tuple[Grid, float] | None:
        with self._lock:
            while self._queue:
                grid = self._queue.popleft()
                if grid.cancelled.is_set():
                    grid.x = None
                    continue
                pending = grid.pending
                if not pending:
                    grid.finished, grid.x = grid.finished or time.monotonic(), None
                    continue
                self._queue.append(grid)  # round-robin: one ratio, then the next visitor's grid
                return grid, pending[0]
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self._next()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            grid, ratio = job
            if not self._gate.wait_idle(grid.cancelled):
                continue
            try:
                analysis = self._compute(grid.x, replace(grid.settings, ratio=ratio), grid.reference,
                                         modality=grid.modality)
            except Exception as err:  # noqa: BLE001 - a ratio the method cannot reach: the slider runs it and says why
                with self._lock:
                    grid.errors[ratio] = str(err)
                continue
            with self._lock:
                if not grid.cancelled.is_set():
                    grid.results[ratio] = self._stored(analysis)
                    if grid.ready:
                        grid.finished = time.monotonic()


GRIDS = GridStore()  # the server's store
atexit.register(GRIDS.close)
