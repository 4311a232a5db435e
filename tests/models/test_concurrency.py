"""Concurrent first use of a fresh model: one patch, each caller's own settings, a clean unpatch."""
from __future__ import annotations

import sys
import threading

import torch

import tomviz
from tomviz.models import patching
from tests import tiny


def _hook_counts(model: torch.nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


def test_eight_threads_on_a_fresh_model_patch_it_once_and_unpatch_restores_it():
    model = tiny.vit(image_size=64)
    x = torch.randn(1, 3, 64, 64)
    hooks_before = _hook_counts(model)
    expected = {r: [65 - r * i for i in range(5)] for r in range(8)}
    reference = model(pixel_values=x).last_hidden_state
    barrier = threading.Barrier(8)
    infos, results, errors = {}, {}, []

    def work(r: int) -> None:
        try:
            barrier.wait()
            infos[r] = patching.apply(model)
            results[r] = [tomviz.inspect(model, x, r=r).trace.token_counts() for _ in range(3)]
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert len({id(info) for info in infos.values()}) == 1, "the model was patched more than once"
    for r in range(8):
        assert results[r] == [expected[r]] * 3, f"thread r={r} saw another thread's settings"
    tomviz.unpatch(model)
    assert "forward" not in model.__dict__
    assert all("forward" not in block.__dict__ for block in model.layers)
    assert _hook_counts(model) == hooks_before, "unpatch left hooks behind"
    torch.testing.assert_close(model(pixel_values=x).last_hidden_state, reference, rtol=0, atol=0)
