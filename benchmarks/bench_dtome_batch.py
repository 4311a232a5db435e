"""DToMe in a batch: every image keeps its own token count (DyMU), and what that costs.

    python benchmarks/bench_dtome_batch.py --r 8 --rounds 5

dinov2-small (embedded weights) on the six example photos as one batch, DToMe at the shipped thresholds for
``r``. Prints each image's tokens after the last layer (alone and inside the batch: they must agree), and the
batch's time merged vs unmerged, side by side, process CPU time, one torch thread. A batch now costs what its
longest row costs: shorter rows are padded and masked, not cut to the batch minimum.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tomviz  # noqa: E402
from tomviz.merge import get_method  # noqa: E402
from tomviz.merge.engine import MergeConfig  # noqa: E402
from timing import side_by_side  # noqa: E402

PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "hubble_deep_field.jpg", "grace_hopper.jpg"]


def tokens_left(state) -> list[int]:
    """Tokens each batch element holds after the last layer (padding slots not counted)."""
    sizes = state.sizes[..., 0]  # [B, N]
    valid = state.valid if state.valid is not None else torch.ones_like(sizes, dtype=torch.bool)
    return (valid & (sizes > 0)).sum(1).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = tomviz.load("dinov2-small", device="cpu")
    prepared = [model.prepare(str(ROOT / "assets" / name)) for name in PHOTOS]
    batch = prepared[0]
    batch.tensors = {"pixel_values": torch.cat([p.tensors["pixel_values"] for p in prepared])}
    config = MergeConfig(method=get_method("dtome"), r=args.r)
    unmerged = MergeConfig(method=get_method("tome"), r=0)
    alone = [tokens_left(model.run(p, config)[1])[0] for p in prepared]
    together = tokens_left(model.run(batch, config)[1])
    times, _ = side_by_side({"unmerged": lambda: model.run(batch, unmerged), "dtome": lambda: model.run(batch, config)},
                            rounds=args.rounds, warmup=1, clock=time.process_time)
    n0 = prepared[0].tensors["pixel_values"].shape[-1] // model.patch_size
    print(f"dinov2-small, dtome r={args.r} (shipped thresholds), {len(PHOTOS)} photos, {n0 * n0 + 1} tokens in")
    print("| photo | tokens out, alone | tokens out, in the batch |\n|---|---:|---:|")
    for name, a, b in zip(PHOTOS, alone, together):
        print(f"| {name} | {a} | {b} |")
    base, merged = statistics.median(times["unmerged"]), statistics.median(times["dtome"])
    print(f"batch of {len(PHOTOS)}: unmerged {base * 1e3:.0f} ms, dtome {merged * 1e3:.0f} ms, "
          f"speed-up {base / merged:.2f}x (process CPU time, median of {args.rounds})")


if __name__ == "__main__":
    main()
