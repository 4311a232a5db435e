"""The CLI, run as a user runs it (subprocess), on small inputs."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tomviz", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _require(name: str) -> None:
    import tomviz

    try:
        tomviz.load(name, device="cpu")
    except tomviz.ModelLoadError as err:
        pytest.skip(f"{name} unavailable: {err}")


def test_help_names_the_commands():
    for args in ([], ["inspect"], ["sweep"]):
        done = _cli(*args, "--help")
        assert done.returncode == 0, done.stderr
    assert "inspect" in _cli("--help").stdout and "--ratios" in _cli("sweep", "--help").stdout


@pytest.fixture
def tiny_image(tmp_path):
    from PIL import Image

    path = tmp_path / "tiny.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return path


def test_inspect_image(tmp_path, tiny_image):
    _require("dinov2-small")
    out = tmp_path / "out"
    done = _cli("inspect", str(tiny_image), "--method", "pitome", "--ratio", "0.5", "--out", str(out))
    assert done.returncode == 0, done.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["token_counts"][0] == 257 and stats["token_counts"][-1] == 129
    assert (out / "trace.json").exists() and (out / "trace.npz").exists()
    assert len(list(out.glob("overlay_layer*.png"))) == 12


def test_inspect_text(tmp_path):
    _require("minilm")
    out = tmp_path / "out"
    done = _cli("inspect", "unbelievably tokenized words", "--method", "subword", "--r", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert ["un", "##bel", "##ie", "##va", "##bly"] in stats["groups_last_layer"]
    assert ["token", "##ized"] in stats["groups_last_layer"]


def test_sweep_text(tmp_path):
    _require("minilm")
    out = tmp_path / "out"
    done = _cli("sweep", "a short sentence about cats", "--methods", "tome", "evit", "--ratios", "0.25", "0.95",
                "--runs", "1", "--warmup", "0", "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 4
    reachable = [r for r in rows if not r["error"]]
    assert reachable and all(0 < float(r["cosine"]) <= 1.0001 for r in reachable)
    # 0.95 of 6 unprotected tokens (6) cannot go at most half per layer in 6 layers (5 can)
    assert [bool(r["error"]) for r in rows] == [False, True, False, True]
    assert (out / "sweep.html").exists() and (out / "sweep.png").exists()


def test_bad_image_path(tmp_path):
    done = _cli("inspect", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"))
    assert done.returncode != 0 and "not found" in done.stderr
