"""ToMe inside VideoMAE's encoder against its zero-cost ceiling: VideoMAE-S shape, random weights, CPU.

VideoMAE-S: 16 frames of 224² in 16² patches and tubelets of 2 → 8 x 14 x 14 = 1568 space-time tokens, 12 blocks
of width 384 (6 heads, MLP 1536). ToMe merges ``r`` tokens per block across space and time
(``tomviz/models/videomae.py``), ``r`` chosen so the last block hands on 50 % fewer tokens (``--fewer``). Three
configurations, timed side by side (:func:`timing.side_by_side`: each once per round, in turn, medians reported):

* unpatched: the stock ``VideoMAEModel``;
* ToMe: the same weights patched by tomviz, ``r`` per block (bipartite matching, size-weighted merge,
  proportional attention);
* ceiling: the same schedule with the tokens dropped by a slice (no matching, no merge arithmetic, no attention
  bias: ``bench_core.slicing_instead_of_merging``): no merge method can be faster on the same schedule.

The figure of merit is ToMe's speed-up over the ceiling's: ``(unpatched / ToMe) / (unpatched / ceiling)``.

    python benchmarks/bench_videomae.py --threads 1 --rounds 7
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_core import slicing_instead_of_merging  # noqa: E402
from timing import side_by_side  # noqa: E402

import tomviz  # noqa: E402
from tomviz.merge import get_method  # noqa: E402
from tomviz.merge.engine import MergeConfig  # noqa: E402
from tomviz.models import patching  # noqa: E402


def videomae_small() -> tf.VideoMAEModel:
    """VideoMAE-S's encoder shape (ViT-S/16 on 16-frame tubelets of 2), random weights, SDPA."""
    config = tf.VideoMAEConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                               image_size=224, patch_size=16, num_frames=16, tubelet_size=2)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return tf.VideoMAEModel(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fewer", type=float, default=0.5, help="fraction of the tokens gone after the last block")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = videomae_small()
    merged = copy.deepcopy(base)
    tomviz.patch(merged, r=0)
    tokens, layers = base.config.num_frames // 2 * (224 // 16) ** 2, base.config.num_hidden_layers
    r = math.ceil(tokens * args.fewer / layers)
    x = torch.randn(1, 16, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    config = MergeConfig(method=get_method("tome"), r=r)

    def run_merged():
        patching.set_default_config(merged, config)
        return merged(pixel_values=x).last_hidden_state.shape[1]

    def run_ceiling():
        with slicing_instead_of_merging():
            return run_merged()

    runs = {"unpatched": lambda: base(pixel_values=x).last_hidden_state.shape[1], "tome": run_merged,
            "ceiling": run_ceiling}
    with torch.inference_mode():
        times, outs = side_by_side(runs, args.rounds, args.warmup, time.perf_counter)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    tome_speedup, ceiling_speedup = med["unpatched"] / med["tome"], med["unpatched"] / med["ceiling"]
    print(f"VideoMAE-S shape, {tokens} tokens, r={r} per block ({tokens} -> {outs['tome']} tokens, "
          f"ceiling -> {outs['ceiling']}), threads={args.threads}, batch 1, median of {args.rounds} rounds")
    print("| unpatched ms | ToMe ms | ceiling ms | ToMe speed-up | ceiling speed-up | ToMe / ceiling |")
    print("|---|---|---|---|---|---|")
    print(f"| {med['unpatched']:.0f} | {med['tome']:.0f} | {med['ceiling']:.0f} | {tome_speedup:.2f}x | "
          f"{ceiling_speedup:.2f}x | {tome_speedup / ceiling_speedup:.2f} |")


if __name__ == "__main__":
    main()
