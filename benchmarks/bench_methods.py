"""Throughput against merge amount for every merge method on ViT-S/16 (random weights), CPU.

    python benchmarks/bench_methods.py [--batches 1 16] [--rs 8 16] [--rounds 5] [--threads N]

Protocol (REFERENCES §6): random input, eval, inference mode, warm-up rounds untimed,
then the median over rounds. ``--cpu-time`` times with the process's CPU time
instead of the wall clock (less distorted on a machine shared with other jobs). Every round times every configuration once, in turn
(the unmerged model included), so machine noise hits all alike; speed-ups are taken
within the run. ``dtome`` uses the shipped thresholds (calibrated on dinov2-small),
so on random weights its token count is whatever passes them: the table reports it.
``subword`` is text-only and left out.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tomviz  # noqa: E402
from tomviz.merge import METHODS, get_method  # noqa: E402
from tomviz.merge.engine import MergeConfig  # noqa: E402
from tomviz.models import patching  # noqa: E402
from timing import side_by_side, vit_config  # noqa: E402

IMAGE_METHODS = [m for m in METHODS if m != "subword"]


def forward(model: torch.nn.Module, pixels: torch.Tensor, method: str | None, r: int) -> int:
    """One forward; returns the token count at the output."""
    with torch.inference_mode():
        if method is None:
            return model(pixel_values=pixels).last_hidden_state.shape[1]
        config = MergeConfig(method=get_method(method), r=r, extra={"patch_grid": [14, 14]})
        with patching.new_state(model, config, {}):
            return model(pixel_values=pixels).last_hidden_state.shape[1]


def bench(batch: int, rs: list[int], rounds: int, warmup: int, cpu_time: bool = False) -> list[dict]:
    torch.manual_seed(0)
    model = tf.ViTModel(vit_config("S"), add_pooling_layer=False).eval()
    tomviz.load(model)  # patch (idempotent); without a merge state the model runs unchanged
    pixels = torch.randn(batch, 3, 224, 224)
    configs = [(None, 0)] + [(m, r) for r in rs for m in IMAGE_METHODS]
    clock = time.process_time if cpu_time else time.perf_counter
    runs = {(method, r): functools.partial(forward, model, pixels, method, r) for method, r in configs}
    times, tokens = side_by_side(runs, rounds, warmup, clock)
    base = statistics.median(times[(None, 0)])
    rows = []
    for method, r in configs:
        median = statistics.median(times[(method, r)])
        rows.append({"batch": batch, "method": method or "unmerged", "r": r, "tokens_out": tokens[(method, r)],
                     "im_per_s": batch / median, "speedup": base / median})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--rs", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rs16", nargs="+", type=int, help="r values at batch 16 (default: --rs)")
    parser.add_argument("--cpu-time", action="store_true", help="time with process CPU time, not wall clock")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = "process CPU time" if args.cpu_time else "wall clock"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {clock}, ViT-S/16 random weights, 197 tokens\n")
    print("| batch | method | r | tokens out | im/s | speed-up |")
    print("|---:|---|---:|---:|---:|---:|")
    for batch in args.batches:
        rs = args.rs16 if (batch > 1 and args.rs16) else args.rs
        for row in bench(batch, rs, args.rounds, args.warmup, args.cpu_time):
            print(f"| {row['batch']} | {row['method']} | {row['r']} | {row['tokens_out']} | {row['im_per_s']:.1f} | {row['speedup']:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
