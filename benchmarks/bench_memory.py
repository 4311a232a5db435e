"""Peak memory with both embedded default models loaded and used once.

    python benchmarks/bench_memory.py

Prints the process's peak resident set size (ru_maxrss) after loading
``dinov2-small`` and ``minilm`` and running one traced inspect on each.
"""
from __future__ import annotations

import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

import tomviz  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def main() -> None:
    vision = tomviz.load("dinov2-small")
    text = tomviz.load("minilm")
    tomviz.inspect(vision, Image.open(ASSETS / "chelsea.png"), ratio=0.5)
    tomviz.inspect(text, "Token merging keeps the meaning and drops the redundancy.", ratio=0.5)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS with dinov2-small + minilm loaded and run: {peak_mib:.0f} MiB (target <= 2048 MiB)")


if __name__ == "__main__":
    main()
