"""tomviz/speed.py: analytic FLOPs by hand, token counts from a merge state, latency bookkeeping."""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import tomviz
from tomviz import speed
from tomviz.merge import get_method
from tomviz.merge.engine import MergeConfig
from tomviz.speed import (
    SpeedReport,
    gflops_per_layer,
    layer_flops,
    model_widths,
    state_token_counts,
    trace_gflops,
)
from tomviz.trace import LayerTrace, Trace


def test_layer_flops_by_hand():
    attention, mlp = layer_flops(n_in=10, n_out=6, hidden=4, mlp_hidden=16)
    assert attention == 2 * 4 * 10 * 16 + 2 * 2 * 100 * 4
    assert mlp == 2 * 2 * 6 * 4 * 16


def test_gflops_per_layer_sums_both_parts():
    assert gflops_per_layer([10, 6], [6, 6], 4, 16) == [
        (2 * 4 * 10 * 16 + 2 * 2 * 100 * 4 + 2 * 2 * 6 * 4 * 16) / 1e9,
        (2 * 4 * 6 * 16 + 2 * 2 * 36 * 4 + 2 * 2 * 6 * 4 * 16) / 1e9,
    ]


def _trace(counts: list[int]) -> Trace:
    """A trace whose layers merge the last tokens into token 1: token counts ``counts``."""
    layers = []
    for n_in, n_out in itertools.pairwise(counts):
        source = np.minimum(np.arange(counts[0]), n_out - 1).astype(np.int32)
        sizes = np.bincount(source).astype(np.float32)
        layers.append(LayerTrace(source=source, sizes=sizes, num_tokens_in=n_in))
    return Trace(meta={"num_input_tokens": counts[0], "num_protected": 1}, layers=layers)


def test_trace_gflops_merged_is_cheaper():
    trace = _trace([5, 4, 3])
    assert trace.token_counts() == [5, 4, 3]
    merged, unmerged = trace_gflops(trace, hidden=384, mlp_hidden=1536)
    assert merged == gflops_per_layer([5, 4], [4, 3], 384, 1536)
    assert unmerged == gflops_per_layer([5, 5], [5, 5], 384, 1536)
    assert merged[0] < unmerged[0] and merged[1] < merged[0]


@pytest.mark.parametrize("config, widths", [
    (SimpleNamespace(hidden_size=32, intermediate_size=37), (32, 37)),  # ViT, BERT, CLIP
    (SimpleNamespace(hidden_size=384, mlp_ratio=4), (384, 1536)),  # DINOv2
    (SimpleNamespace(hidden_size=32, intermediate_size=None, mlp_ratio=2.5), (32, 80)),
    (SimpleNamespace(hidden_size=48), (48, 192)),  # no MLP width given: 4 x hidden
])
def test_model_widths(config, widths):
    assert model_widths(config) == widths


def test_state_token_counts_fill_in_the_blocks_that_merged_nothing(tiny_vit_classifier):
    """Layers 0 and 1 run their original forward (nothing to merge yet) and record nothing."""
    loaded = tomviz.load(tiny_vit_classifier)
    _, state = loaded.run(loaded.prepare(torch.randn(1, 3, 32, 32)), MergeConfig(method=get_method("tome"), r=[0, 0, 4, 4]))
    assert state.removed == [4, 4]
    assert state_token_counts(state) == [65, 65, 65, 61, 57]


def test_latencies_drop_the_warmup_and_never_trace(monkeypatch):
    seen: list[MergeConfig] = []
    loaded = SimpleNamespace(device=torch.device("cpu"), run=lambda inputs, config: (seen.append(config), None))
    config = MergeConfig(method=get_method("tome"), r=2, trace=True)
    ticks = iter([0.0, 5.0, 5.0, 6.0, 6.0, 9.0, 10.0, 12.0, 20.0, 29.0, 30.0, 34.0])  # start, stop per forward
    monkeypatch.setattr(speed, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    assert speed.measure_latencies(loaded, None, config, runs=2, warmup=1) == [1.0, 3.0]  # the 5 s warm-up dropped
    assert speed.measure_latency(loaded, None, config, runs=3, warmup=0) == 4.0  # median of 2, 9, 4
    assert len(seen) == 6 and not any(c.trace for c in seen) and config.trace  # the caller's config is untouched


def test_speed_report_figures():
    report = SpeedReport(merged_s=0.25, unmerged_s=1.0, merged_gflops=[1.0, 0.5], unmerged_gflops=[1.0, 1.0], runs=5)
    assert report.speedup == 4.0 and report.flops_ratio == pytest.approx(2.0 / 1.5)
    assert (report.merged_gflops_total, report.unmerged_gflops_total) == (1.5, 2.0)
    d = report.to_dict()
    assert (d["merged_ms"], d["unmerged_ms"], d["speedup"], d["runs"], d["device"]) == (250.0, 1000.0, 4.0, 5, "cpu")
    assert math.isnan(SpeedReport(merged_s=0.0, unmerged_s=1.0).speedup)
    assert math.isnan(SpeedReport(merged_s=1.0, unmerged_s=1.0).flops_ratio)  # no FLOPs counted
