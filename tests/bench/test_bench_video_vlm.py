"""``benchmarks/bench_video.py --vlm-smoke``: the GPU benchmark's code (LLaVA-OneVision-7B's shape with --gpu) runs
at a tiny shape on the CPU and prints every table."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.mark.slow
def test_smoke(capsys):
    import bench_video_vlm

    bench_video_vlm.main(["--vlm-smoke", "--rounds", "1", "--warmup", "0", "--frames", "2", "--decode-steps", "2",
                          "--methods", "holitom", "dycoke"])
    out = capsys.readouterr().out
    assert "2 frames x 16 = 32 visual tokens" in out
    assert "| holitom | " in out and "| dycoke | " in out and "| fastv | 2 |" in out and "| holitom | 3 |" in out
    assert "DyCoke while decoding" in out
