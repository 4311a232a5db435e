"""Benchmark: Banzhaf values of the default vision model's merged groups on CPU.

dinov2-small at ratio 0.9 on assets/chelsea.png, the groups of the last layer that has a
block after it (0-based layer L-2 = the tokens entering the last block: with a CLS-read
target nothing runs after layer L-1, see tomviz.scores.banzhaf), 512 MSR samples.
Reports the first call (which also runs the unmerged reference forward once per input)
and the median of warm calls (new seed each). Target: ≤ 2 s.

Run: PYTHONPATH=. python benchmarks/bench_scores.py [--runs 5] [--samples 512] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

import tomviz

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--image", default=str(ROOT / "assets" / "chelsea.png"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as app.py; 0 = torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = tomviz.load("dinov2-small")
    t0 = time.perf_counter()
    res = tomviz.inspect(loaded, args.image, ratio=args.ratio, keep_hidden=True)
    inspect_s = time.perf_counter() - t0
    layer = res.trace.num_layers - 2
    t0 = time.perf_counter()
    first = res.banzhaf(layer, samples=args.samples, seed=0)
    first_s = time.perf_counter() - t0
    warm, cpu = [], []
    for seed in range(1, args.runs + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        res.banzhaf(layer, samples=args.samples, seed=seed)
        warm.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    median = statistics.median(warm)
    print(f"device cpu, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    print(f"inspect (ratio {args.ratio}, keep_hidden): {inspect_s:.3f} s; tokens per layer {res.trace.token_counts()}")
    print(f"players: {first.num_groups} groups after layer {layer} (0-based); target: {first.target}")
    print(f"banzhaf {args.samples} samples: first call {first_s:.3f} s (incl. unmerged reference), "
          f"warm median {median:.3f} s over {args.runs} (min {min(warm):.3f}, max {max(warm):.3f}); "
          f"CPU time per warm call (all threads) median {statistics.median(cpu):.3f} s")
    print(f"median stderr {statistics.median(first.stderr.tolist()):.4f}; target ≤ 2 s: {'PASS' if first_s <= 2 else 'FAIL'} (first call)")


if __name__ == "__main__":
    main()
