"""Speed of merged vs unmerged forwards: measured latency and analytic FLOPs.

Latency: median wall time of ``runs`` untraced forwards on the model's device
(CUDA is synchronised around each run). FLOPs: counted per transformer layer
from the token counts, with the merge placed where tomviz merges (after the
attention residual, before the MLP). One multiply-add counts as 2 FLOPs;
embeddings, norms, softmax and heads are left out.

For a layer with ``n_in`` tokens entering, ``n_out`` leaving, width ``C`` and MLP
width ``M``:

* attention = 2·(4·n_in·C²)  (q, k, v, output projections)  + 2·(2·n_in²·C)  (QKᵀ and AV)
* MLP       = 2·(2·n_out·C·M)
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

from tomviz.merge.engine import MergeConfig
from tomviz.models.adapter import config_widths


def layer_flops(n_in: int, n_out: int, hidden: int, mlp_hidden: int) -> tuple[float, float]:
    """``(attention, mlp)`` FLOPs of one layer (see the module docstring)."""
    attention = 2.0 * (4 * n_in * hidden * hidden) + 2.0 * (2 * n_in * n_in * hidden)
    mlp = 2.0 * (2 * n_out * hidden * mlp_hidden)
    return attention, mlp


def gflops_per_layer(tokens_in: Sequence[int], tokens_out: Sequence[int], hidden: int, mlp_hidden: int) -> list[float]:
    """``[L]`` GFLOPs (attention + MLP) for per-layer token counts entering / leaving each layer."""
    return [sum(layer_flops(int(a), int(b), hidden, mlp_hidden)) / 1e9 for a, b in zip(tokens_in, tokens_out)]


def model_widths(config: Any) -> tuple[int, int]:
    """``(hidden C, MLP width M)`` from a transformers config; a loaded model's family says its own
    widths (``LoadedModel.widths``, :attr:`tomviz.models.adapter.Adapter.widths`)."""
    return config_widths(config)


def timed_run(loaded: Any, inputs: Any, config: MergeConfig) -> tuple[Any, Any, float]:
    """One forward under ``config`` (traced or not): ``(outputs, state, seconds)``."""
    cuda = loaded.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    outputs, state = loaded.run(inputs, config)
    if cuda:
        torch.cuda.synchronize()
    return outputs, state, time.perf_counter() - start


def measure_latencies(loaded: Any, inputs: Any, config: MergeConfig, runs: int = 3, warmup: int = 0) -> list[float]:
    """Seconds of each of ``runs`` untraced forwards of ``loaded`` on ``inputs`` under ``config``."""
    config = replace(config, trace=False)
    times = [timed_run(loaded, inputs, config)[2] for _ in range(warmup + runs)]
    return times[warmup:]


def measure_latency(loaded: Any, inputs: Any, config: MergeConfig, runs: int = 3, warmup: int = 0) -> float:
    """Median seconds of ``runs`` untraced forwards (see :func:`measure_latencies`)."""
    return statistics.median(measure_latencies(loaded, inputs, config, runs, warmup))


@dataclass
class SpeedReport:
    """Merged vs unmerged speed for one input (seconds; GFLOPs per layer ``[L]``)."""

    merged_s: float
    unmerged_s: float
    merged_gflops: list[float] = field(default_factory=list)
    unmerged_gflops: list[float] = field(default_factory=list)
    runs: int = 3  # timed merged forwards
    baseline_runs: int = 3  # timed unmerged forwards
    device: str = "cpu"

    @property
    def speedup(self) -> float:
        return self.unmerged_s / self.merged_s if self.merged_s > 0 else float("nan")

    @property
    def merged_gflops_total(self) -> float:
        return float(sum(self.merged_gflops))

    @property
    def unmerged_gflops_total(self) -> float:
        return float(sum(self.unmerged_gflops))

    @property
    def flops_ratio(self) -> float:
        return self.unmerged_gflops_total / self.merged_gflops_total if self.merged_gflops_total else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device, "runs": self.runs, "baseline_runs": self.baseline_runs, "merged_ms": self.merged_s * 1e3, "unmerged_ms": self.unmerged_s * 1e3,
            "speedup": self.speedup, "merged_gflops_total": self.merged_gflops_total,
            "unmerged_gflops_total": self.unmerged_gflops_total, "merged_gflops": self.merged_gflops,
            "unmerged_gflops": self.unmerged_gflops,
        }


def state_token_counts(state: Any) -> list[int]:
    """Tokens the batch carried after each layer, preceded by the input count: ``[N0, N_0, ..., N_{L-1}]``,
    from a merge state (traced or not). Blocks that ran their original forward (nothing merged yet)
    record nothing; they removed no token, so the missing leading entries are zeros."""
    removed = list(state.removed)
    removed = [0] * (state.num_layers - len(removed)) + removed
    counts = [int(state.meta["num_input_tokens"])]
    for r in removed:
        counts.append(counts[-1] - int(r))
    return counts


def trace_gflops(trace: Any, hidden: int, mlp_hidden: int) -> tuple[list[float], list[float]]:
    """``(merged [L], unmerged [L])`` GFLOPs per layer for a trace's token counts."""
    counts = trace.token_counts()  # [N0, N_0, ..., N_{L-1}]
    merged = gflops_per_layer(counts[:-1], counts[1:], hidden, mlp_hidden)
    n0 = counts[0]
    unmerged = gflops_per_layer([n0] * trace.num_layers, [n0] * trace.num_layers, hidden, mlp_hidden)
    return merged, unmerged
