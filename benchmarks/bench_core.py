"""Core speed benchmark: ToMe merging on ViT-S/16 (random weights), side by side with the unpatched model.

    python benchmarks/bench_core.py [--batches 1 16] [--rs 0 8 13 16] [--rounds 15] [--device cpu]

Protocol (ToMe's): random input, eval, inference mode, warm-up runs untimed, then
the median over rounds. Every round times every configuration once, in turn, so
machine noise hits all of them alike; ratios are taken within the run.
Reports: latency per configuration, speedup over the unpatched model, the FLOP
ratio limit, and trace mode (recording groups, sizes, edges and CLS attention)
against plain merging.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tomviz  # noqa: E402
from tomviz.merge import get_method  # noqa: E402
from tomviz.merge.engine import MergeConfig, MergeState  # noqa: E402
from tomviz.merge.schedule import clipped_constant_schedule, token_counts  # noqa: E402
from tomviz.models import patching  # noqa: E402
from tomviz.speed import gflops_per_layer  # noqa: E402
from timing import side_by_side, vit_config  # noqa: E402


def flops_ratio(num_tokens: int, schedule: list[int], hidden: int, mlp: int) -> float:
    """Unmerged FLOPs / merged FLOPs over the blocks (the speedup limit): attention at the
    tokens entering a block, MLP at the tokens left after its merge (tomviz.speed)."""
    counts = [num_tokens] + token_counts(num_tokens, schedule)
    full = sum(gflops_per_layer([num_tokens] * len(schedule), [num_tokens] * len(schedule), hidden, mlp))
    return full / sum(gflops_per_layer(counts[:-1], counts[1:], hidden, mlp))


@contextlib.contextmanager
def slicing_instead_of_merging():
    """The hardware ceiling: every block drops its last r tokens with a slice (no matching,
    no merge arithmetic, no attention bias), so only the smaller matrix products remain.
    No merge method can be faster than this on the same schedule."""
    original = MergeState.after_attention

    def drop(self: MergeState, layer: int, x: torch.Tensor, *projections_and_heads) -> torch.Tensor:
        r = self.schedule[layer]
        self.removed.append(r)
        return x[:, : x.shape[1] - r]

    MergeState.after_attention = drop
    try:
        yield
    finally:
        MergeState.after_attention = original


def timer(device: torch.device, cpu_time: bool = False):
    read = time.process_time if cpu_time else time.perf_counter

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return read()

    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rs", type=int, nargs="+", default=[0, 8, 13, 16])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", choices=["S", "B"], default="S")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument(
        "--ceiling", action="store_true",
        help="also time the ceiling: the same schedule with tokens dropped by slicing (zero merge cost)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--cpu-time", action="store_true",
        help="time with process CPU time instead of wall time (steadier on a shared machine; use with --threads 1)",
    )
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = tf.ViTModel(vit_config(args.size), add_pooling_layer=False).eval().to(device, dtype)
    merged = copy.deepcopy(base)
    tomviz.patch(merged, r=0)
    clock = timer(device, args.cpu_time)
    tome = get_method("tome")
    clock_name = "process CPU time" if args.cpu_time else "wall time"
    print(f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} ViT-{args.size}/16 rounds={args.rounds} clock={clock_name}")
    ceiling_head = " ceiling ms | ceiling speedup |" if args.ceiling else ""
    print("| batch | r | unpatched ms | merged ms | speedup | FLOP-ratio limit | speedup / limit | trace ms | trace / merged |" + ceiling_head)
    print("|---|---|---|---|---|---|---|---|---|" + "---|---|" * args.ceiling)
    for batch in args.batches:
        x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)

        def run_base():
            base(pixel_values=x)

        def make_merged(r):
            config = MergeConfig(method=tome, r=r)

            def fn():
                patching.set_default_config(merged, config)
                merged(pixel_values=x)

            return fn

        def make_traced(r):
            config = MergeConfig(method=tome, r=r, trace=True)

            def fn():
                with patching.new_state(merged, config):
                    merged(pixel_values=x)

            return fn

        def make_ceiling(r):
            merged_fn = make_merged(r)

            def fn():
                with slicing_instead_of_merging():
                    merged_fn()

            return fn

        runs = {"base": run_base}
        for r in args.rs:
            runs[("merged", r)] = make_merged(r)
            runs[("trace", r)] = make_traced(r)
            if args.ceiling:
                runs[("ceiling", r)] = make_ceiling(r)
        with torch.inference_mode():
            times, _ = side_by_side(runs, args.rounds, args.warmup, clock)
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        for r in args.rs:
            schedule = clipped_constant_schedule(r, 12, 197, 1)  # what the merged model runs (r=16 clips the last layer)
            limit = flops_ratio(197, schedule, hidden=base.config.hidden_size, mlp=base.config.intermediate_size)
            speedup = med["base"] / med[("merged", r)]
            print(
                f"| {batch} | {r} | {med['base']:.1f} | {med[('merged', r)]:.1f} | {speedup:.2f}x | {limit:.2f}x | "
                f"{speedup / limit:.2f} | {med[('trace', r)]:.1f} | {med[('trace', r)] / med[('merged', r)]:.3f} |"
                + (f" {med[('ceiling', r)]:.1f} | {med['base'] / med[('ceiling', r)]:.2f}x |" if args.ceiling else "")
            )


if __name__ == "__main__":
    main()
