"""``python -m tomviz bench`` on a folder of clips: temporal methods on a per-frame model's tokens (a tiny random
DINOv2 in place of the embedded one), the upload bounds, and VideoMAE's own merging; the Benchmark tab reads them."""
from __future__ import annotations

import json

import numpy as np
import pytest

import tomviz
from tests import tiny
from tests.inputs.test_video import write_clip
from tomviz.bench import read_rows
from tomviz.bench import worker as worker_module
from tomviz.cli import main


@pytest.fixture
def clip_folder(square_mp4, tmp_path):
    """square.mp4 (12 frames), broken.webm (not a clip), big.mp4 (2048 x 1088: over the upload bound), notes.txt."""
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "square.mp4").write_bytes(square_mp4.read_bytes())
    (folder / "broken.webm").write_bytes(b"\x00" * 300)
    write_clip(folder / "big.mp4", np.zeros((2, 1088, 2048, 3), np.uint8))
    (folder / "notes.txt").write_text("not an input")
    return folder


def by_item_and_method(rows):
    return {(r["item"], r["method"]): r for r in rows}


def test_a_folder_of_clips_gives_rows_per_clip_method_and_ratio(clip_folder, tiny_frames_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(worker_module, "load", lambda name, device=None: tiny_frames_model)
    out = tmp_path / "out"
    assert main(["bench", str(clip_folder), "--model", "tiny-frames", "--methods", "holitom", "dycoke", "pitome",
                 "--ratios", "0.5", "--frames", "8", "--engine", "local", "--no-progress", "--out", str(out)]) == 0
    assert "3 inputs × 3 settings × 1 model(s) = 9 rows" in capsys.readouterr().out
    rows = by_item_and_method(read_rows(out / "results.parquet"))
    direct = tomviz.inspect(tiny_frames_model, clip_folder / "square.mp4", method="holitom", ratio=0.5, num_frames=8)
    holitom = rows["square.mp4", "holitom"]
    assert holitom["error"] is None and holitom["frames"] == 8 and holitom["tokens_in"] == 8 * 64
    assert holitom["tokens_out"] == direct.token_counts()[-1] < 512
    assert holitom["cosine"] == pytest.approx(direct.fidelity, abs=1e-6)
    assert holitom["method_ms_per_frame"] > 0 and holitom["seconds"] > holitom["base_seconds"] > 0
    assert rows["square.mp4", "dycoke"]["tokens_out"] < 512 and rows["square.mp4", "dycoke"]["error"] is None
    assert "pitome" in rows["square.mp4", "pitome"]["error"]  # an encoder-only method: an error row, the rest runs
    assert "not a readable video" in rows["broken.webm", "holitom"]["error"]
    assert "frame size 2.22822e+06 pixels is over the limit" in rows["big.mp4", "holitom"]["error"]
    summary = json.loads((out / "summary.json").read_text())["summary"]
    entry = next(e for e in summary if e["method"] == "holitom")
    assert entry["ran"] == 1 and entry["errors"] == 2 and entry["method_ms_per_frame"] == pytest.approx(holitom["method_ms_per_frame"])


def test_the_benchmark_tab_reads_clip_results(clip_folder, tiny_frames_model, tmp_path, monkeypatch):
    from tomviz.ui.bench_tab import load_results, results_view

    monkeypatch.setattr(worker_module, "load", lambda name, device=None: tiny_frames_model)
    out = tmp_path / "out"
    main(["bench", str(clip_folder), "--model", "tiny-frames", "--methods", "holitom", "rlt", "--ratios", "0.5", "0.9",
          "--frames", "4", "--engine", "local", "--no-progress", "--out", str(out)])
    for name in ("summary.json", "results.parquet"):
        summary, _ = load_results(out / name)
        assert {e["method"] for e in summary} == {"holitom", "rlt"} and all(e["method_ms_per_frame"] for e in summary)
        _, _, _, table, _ = results_view(summary, {}, "cosine", "speedup")
        assert len(table) == 4 and all(row[-2] not in ("", "—", None) for row in table)  # the method ms/frame column


def test_a_videomae_benches_clips_through_its_encoder(clip_folder, tmp_path):
    tiny.videomae(classifier=["walk", "run"], seed=0).save_pretrained(tmp_path / "videomae")
    out = tmp_path / "out"
    assert main(["bench", str(clip_folder), "--model", str(tmp_path / "videomae"), "--methods", "tome",
                 "--ratios", "0.5", "--engine", "local", "--no-progress", "--out", str(out)]) == 0
    rows = by_item_and_method(read_rows(out / "results.parquet"))
    square = rows["square.mp4", "tome"]
    assert (square["tokens_in"], square["tokens_out"], square["error"]) == (32, 16, None)
    assert square["gflops"] < square["base_gflops"] and square["seconds"] > 0
    assert "frame size" in rows["big.mp4", "tome"]["error"]  # the same upload bounds
