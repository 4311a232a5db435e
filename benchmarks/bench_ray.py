"""Scale-out benchmark of ``python -m tomviz bench``: the same sweep in process, on Ray with 1 worker
and on Ray with 2 workers; prints wall times and inputs × settings per second.

    PYTHONPATH=. python benchmarks/bench_ray.py                 # 200 images, 4 methods × 5 ratios, dinov2-small
    PYTHONPATH=. python benchmarks/bench_ray.py --images 40 --shard-size 10

Images are generated (smooth random colour fields with a few shapes, 256×256), so nothing is downloaded.
Every run writes into a fresh folder (no shard is reused). Ray's start (``ray.init``) is timed apart from
the sweep; the Ray wall times below include it, the actor start and the model load in each actor.
Each worker runs one torch thread (as the app does), and the in-process loop runs one thread too.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tomviz.bench import BenchSpec, list_items, make_settings, run_bench  # noqa: E402
from tomviz.bench.engine import _runtime_env  # noqa: E402


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((256, 256), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = rng.integers(0, 200, 2)
            size = int(rng.integers(20, 80))
            draw.ellipse([int(x), int(y), int(x) + size, int(y) + size], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(folder / f"img{i:04d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", default="dinov2-small")
    parser.add_argument("--methods", nargs="+", default=["tome", "pitome", "evit", "random"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=20, help="keep images / shard-size even, so 2 workers share evenly")
    parser.add_argument("--runs", nargs="+", default=["local", "ray1", "ray2"], choices=["local", "ray1", "ray2"])
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="tomviz-bench-ray-"))
    (work / "images").mkdir()
    make_images(work / "images", args.images)
    items = list_items(work / "images")
    spec = BenchSpec(models=[args.model], settings=make_settings(args.methods, args.ratios), batch_size=args.batch_size,
                     shard_size=args.shard_size)
    cells = len(items) * len(spec.settings)
    print(f"{len(items)} images × {len(spec.settings)} settings = {cells} on {args.model}, batch {args.batch_size}, "
          f"{-(-len(items) // args.shard_size)} shards; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    results = {}
    for name in args.runs:
        start = time.perf_counter()
        init = 0.0
        if name == "local":
            run = run_bench(spec, items, work / name, engine="local", threads=1)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, runtime_env=_runtime_env(None, False))
            init = time.perf_counter() - start
            run = run_bench(spec, items, work / name, engine="ray", workers=int(name[-1]), cpus_per_worker=1, threads=1)
            ray.shutdown()
        wall = time.perf_counter() - start
        assert not run.failed and len(run.ran) == len(run.shards), run.failed
        results[name] = wall
        print(f"{name:6s} wall {wall:7.1f} s (ray.init {init:4.1f} s)  {cells / wall:6.2f} images×settings/s  "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if "local" in results and "ray1" in results:
        print(f"Ray 1 worker vs in-process: {results['ray1'] / results['local'] - 1:+.1%} (target ≤ +10 %)")
    if "ray1" in results and "ray2" in results:
        print(f"Ray 2 workers vs 1: {results['ray1'] / results['ray2']:.2f}x faster (target ≥ 1.6x)")


if __name__ == "__main__":
    main()
