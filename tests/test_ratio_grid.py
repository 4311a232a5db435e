"""The background ratio grid (tomviz/ratio_grid.py) with a fake model: what is computed, in which order,
what a change of settings cancels, the per-client share, and that visitors' requests go first."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import pytest

from tomviz.analysis import Settings
from tomviz.ratio_grid import ForegroundGate, GridStore, grid_key, grid_ratios
from tomviz.trace import LayerTrace, Trace


@dataclass
class FakeAnalysis:
    """What the store reads of an Analysis: settings, reference, image and trace."""

    settings: Settings
    reference: object
    trace: Trace
    image: object = None


def fake_trace(ratio: float) -> Trace:
    kept = max(1, int(round(4 * (1 - ratio))))
    layer = LayerTrace(source=np.minimum(np.arange(4, dtype=np.int32), kept - 1), sizes=np.ones(kept, np.float32),
                       num_tokens_in=4)
    return Trace(meta={"ratio": ratio}, layers=[layer])


class FakeModel:
    """Records every call (input, ratio, thread) and can be held at a barrier."""

    def __init__(self, unreachable: float | None = None):
        self.calls: list[tuple[str, float]] = []
        self.unreachable = unreachable
        self.release = threading.Event()
        self.release.set()

    def __call__(self, x, settings, reference, modality=None):
        self.release.wait(5)
        if self.unreachable is not None and settings.ratio >= self.unreachable:
            raise ValueError(f"ratio {settings.ratio} cannot be reached")
        self.calls.append((x, settings.ratio))
        return FakeAnalysis(settings=settings, reference=reference, trace=fake_trace(settings.ratio), image="photo")


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def first(x="cat.png", ratio=0.5, **settings) -> FakeAnalysis:
    s = Settings(ratio=ratio, **settings)
    return FakeAnalysis(settings=s, reference="ref", trace=fake_trace(ratio), image="photo")


@pytest.fixture
def store():
    model = FakeModel()
    grids = GridStore(compute=model, gate=ForegroundGate())
    grids.model = model
    yield grids
    grids.close()


def test_grid_ratios_cover_zero_to_the_cap_every_five_hundredths():
    ratios = grid_ratios()
    assert ratios[0] == 0.0 and ratios[-1] == 0.95 and len(ratios) == 20
    assert np.allclose(np.diff(ratios), 0.05)
    assert 0.35 in ratios  # a slider's 0.35 matches exactly (no 0.35000000000000003)


def test_every_ratio_is_computed_once_and_answered_from_memory(store):
    grid = store.start("v1", "1.2.3.4", "cat.png", first(), modality="image")
    assert wait_for(lambda: grid.ready)
    assert sorted(r for _, r in store.model.calls) == [r for r in grid_ratios() if r != 0.5]  # 0.5 came with start
    hit = store.lookup("v1", "cat.png", Settings(ratio=0.35))
    assert hit.settings.ratio == 0.35 and hit.trace.meta["ratio"] == 0.35
    assert hit.image is None  # the photo is kept once, by the session
    assert store.lookup("v1", "cat.png", Settings(ratio=0.5)).trace.meta["ratio"] == 0.5
    assert store.lookup("v1", "dog.png", Settings(ratio=0.35)) is None  # another input
    assert store.lookup("v1", "cat.png", Settings(ratio=0.35, method="pitome")) is None  # another method
    assert store.lookup("v2", "cat.png", Settings(ratio=0.35)) is None  # another visitor
    assert store.nbytes("v1") == sum(a.trace.nbytes for a in grid.results.values()) > 0
    assert grid.finished is not None
    assert wait_for(lambda: grid.x is None)  # the input is let go once the grid is complete


def test_new_settings_cancel_the_old_grid(store):
    store.model.release.clear()  # hold the worker on its first forward
    old = store.start("v1", "ip", "cat.png", first())
    new = store.start("v1", "ip", "cat.png", first(method="pitome"))
    assert old.cancelled.is_set() and not new.cancelled.is_set()
    assert store.start("v1", "ip", "cat.png", first(method="pitome", ratio=0.2)) is new  # only the ratio: same grid
    store.model.release.set()
    assert wait_for(lambda: new.ready)
    old_calls = [c for c in store.model.calls if c[0] == "cat.png"]
    assert len(old_calls) <= len(grid_ratios())  # the old grid got at most the forward it was holding
    assert len(old.results) <= 2  # its first point and at most the held forward


def test_grids_of_two_visitors_advance_in_turn(store):
    store.model.release.clear()
    store.start("a", "ip-a", "a.png", first())
    store.start("b", "ip-b", "b.png", first())
    store.model.release.set()
    assert wait_for(lambda: len(store.model.calls) >= 10)
    inputs = [x for x, _ in store.model.calls[:10]]
    assert inputs.count("a.png") >= 4 and inputs.count("b.png") >= 4  # round-robin, not one grid after the other


def test_one_client_cannot_evict_other_clients():
    model = FakeModel()
    model.release.clear()
    grids = GridStore(compute=model, gate=ForegroundGate(), max_grids=4, per_client=2)
    try:
        grids.start("honest", "10.0.0.1", "h.png", first())
        for i in range(20):  # one client opens many sessions
            grids.start(f"greedy-{i}", "10.0.0.2", f"g{i}.png", first())
        assert grids.grid("honest") is not None
        greedy = [v for v in (f"greedy-{i}" for i in range(20)) if grids.grid(v) is not None]
        assert greedy == ["greedy-18", "greedy-19"]  # its own oldest go first
    finally:
        model.release.set()
        grids.close()


def test_background_work_waits_for_visitors_requests():
    gate = ForegroundGate()
    model = FakeModel()
    grids = GridStore(compute=model, gate=gate)
    try:
        with gate:  # a visitor's request is running the model
            grids.start("v", "ip", "cat.png", first())
            time.sleep(0.3)
            assert model.calls == []
        assert wait_for(lambda: len(model.calls) > 0)
    finally:
        grids.close()


def test_a_ratio_the_method_cannot_reach_is_recorded_not_retried():
    model = FakeModel(unreachable=0.8)
    grids = GridStore(compute=model, gate=ForegroundGate())
    try:
        grid = grids.start("v", "ip", "cat.png", first())
        assert wait_for(lambda: grid.ready)
        assert sorted(grid.errors) == [0.8, 0.85, 0.9, 0.95]
        assert "cannot be reached" in grid.errors[0.9]
        assert grids.lookup("v", "cat.png", Settings(ratio=0.9)) is None  # the slider runs it and shows why
    finally:
        grids.close()


def test_grid_key_ignores_only_the_ratio():
    base = Settings(model="dinov2-small", method="tome", ratio=0.5)
    assert grid_key("x", base) == grid_key("x", replace(base, ratio=0.1))
    for change in (dict(model="m"), dict(method="pitome"), dict(schedule="decreasing"), dict(prop_attn=False)):
        assert grid_key("x", base) != grid_key("x", replace(base, **change))
    assert grid_key("x", base) != grid_key("y", base)


@pytest.mark.slow
def test_real_grid_matches_a_direct_run_on_the_embedded_dinov2():
    from pathlib import Path

    from tomviz.analysis import analyse

    photo = str(Path(__file__).resolve().parents[1] / "assets" / "chelsea.png")
    settings = Settings(model="dinov2-small", method="tome", ratio=0.5)
    start = analyse(photo, settings, modality="image")
    grids = GridStore()
    try:
        grid = grids.start("v", "ip", photo, start, modality="image")
        assert wait_for(lambda: grid.ready, timeout=120)
        assert not grid.errors
        for ratio in (0.0, 0.35, 0.95):
            stored = grids.lookup("v", photo, replace(settings, ratio=ratio))
            direct = analyse(photo, replace(settings, ratio=ratio), start.reference, modality="image")
            assert stored.trace.token_counts() == direct.trace.token_counts()
            for layer in range(direct.trace.num_layers):
                assert np.array_equal(stored.trace.groups(layer), direct.trace.groups(layer))
            assert stored.fidelity.cosine == pytest.approx(direct.fidelity.cosine, abs=1e-5)
        assert 0 < grids.nbytes("v") < 2 * 2**20  # the README's "about 0.6 MB a session"
    finally:
        grids.close()


def test_foreground_handlers_hold_the_gate_and_keep_their_signature(monkeypatch):
    import inspect

    from tomviz import ratio_grid

    gate = ForegroundGate()
    monkeypatch.setattr(ratio_grid, "FOREGROUND", gate)
    seen = []

    def handler(x: int, progress=None) -> int:
        """A model-running handler."""
        seen.append(gate._active)
        return x + 1

    wrapped = ratio_grid.foreground(handler)
    assert wrapped(1) == 2 and seen == [1] and gate._active == 0  # held while it ran, released after
    assert inspect.signature(wrapped) == inspect.signature(handler) and wrapped.__doc__ == handler.__doc__
