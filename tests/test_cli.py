"""The CLI on small inputs: in process through ``tomviz.cli.main`` (as the ``tomviz`` script calls it),
and once as a user runs it (``python -m tomviz`` in a subprocess)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tomviz.cli import METHOD_NAMES, main
from tomviz.cli_vlm import VISUAL_METHOD_NAMES

ROOT = Path(__file__).resolve().parents[1]


def _require(name: str) -> None:
    import tomviz

    try:
        tomviz.load(name, device="cpu")
    except tomviz.ModelLoadError as err:
        pytest.skip(f"{name} unavailable: {err}")


def _exit(argv: list[str]) -> int | str | None:
    """The SystemExit code of ``main(argv)`` (argparse's --help and usage errors, the CLI's "error: ...")."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_the_entry_point_runs_without_loading_torch(tmp_path):
    """``python -m tomviz``: --help, and a failing command, answer without importing torch or transformers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}

    def cli(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "tomviz", *args], cwd=ROOT, env=env,
                              check=False, capture_output=True, text=True, timeout=300)
        imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
        return done, imported

    done, imported = cli("--help")
    assert done.returncode == 0, done.stderr
    assert "inspect" in done.stdout and "sweep" in done.stdout and "bench" in done.stdout
    assert "tomviz.cli" in imported and not {"torch", "transformers"} & imported
    done, imported = cli("inspect", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"))
    assert done.returncode == 1 and f"error: image {str(tmp_path / 'missing.png')!r} not found" in done.stderr
    assert not {"torch", "transformers"} & imported


def test_help_names_the_commands(capsys):
    assert _exit(["--help"]) == 0
    top = capsys.readouterr().out
    assert all(name in top for name in ("inspect", "sweep", "bench"))
    assert _exit(["inspect", "--help"]) == 0
    inspect_help = capsys.readouterr().out
    assert "--question" in inspect_help and "visionzip" in inspect_help and "pitome_text" in inspect_help
    assert _exit(["sweep", "--help"]) == 0
    assert "--ratios" in capsys.readouterr().out


def test_method_names_match_the_registries():
    """The CLI writes the method names out (parsing imports no torch): they are the registries' names."""
    from tomviz.merge import METHODS
    from tomviz.merge.visual import VISUAL_METHODS

    assert METHOD_NAMES == tuple(sorted(METHODS))
    assert VISUAL_METHOD_NAMES == tuple(VISUAL_METHODS)


def test_usage_errors_exit_with_2(capsys):
    assert _exit(["inspect", "x.png"]) == 2  # --out missing
    assert "the following arguments are required: --out" in capsys.readouterr().err
    assert _exit(["inspect", "x.png", "--out", "o", "--method", "nosuch"]) == 2
    assert "invalid choice: 'nosuch'" in capsys.readouterr().err


@pytest.fixture
def tiny_image(tmp_path):
    from PIL import Image

    path = tmp_path / "tiny.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return path


@pytest.mark.slow
def test_inspect_image(tmp_path, tiny_image, capsys):
    _require("dinov2-small")
    out = tmp_path / "out"
    assert main(["inspect", str(tiny_image), "--method", "pitome", "--ratio", "0.5", "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["model"] == "dinov2-small" and stats["method"] == "pitome" and stats["ratio"] == 0.5
    assert stats["token_counts"][0] == 257 and stats["token_counts"][-1] == 129
    assert stats["token_counts"][-1] == 257 - sum(stats["removed_per_layer"]) and len(stats["token_counts"]) == 13
    assert stats["schedule"] == "constant"
    assert 0.99 < stats["final_cosine_to_unmerged"] <= 1.0001  # one colour: merging alike patches keeps the embedding
    assert (out / "trace.json").exists() and (out / "trace.npz").exists()
    assert sorted(p.name for p in out.glob("overlay_layer*.png")) == [f"overlay_layer{i:02d}.png" for i in range(12)]
    assert f"wrote {out}: token counts {stats['token_counts']}" in capsys.readouterr().out


@pytest.mark.slow
def test_inspect_text(tmp_path):
    _require("minilm")
    out = tmp_path / "out"
    assert main(["inspect", "unbelievably tokenized words", "--method", "subword", "--r", "2", "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert ["un", "##bel", "##ie", "##va", "##bly"] in stats["groups_last_layer"]
    assert ["token", "##ized"] in stats["groups_last_layer"]
    assert stats["ratio"] is None and stats["r"] == 2
    assert not list(out.glob("overlay_layer*.png"))  # pictures are for images only


@pytest.mark.slow
def test_sweep_text(tmp_path, capsys):
    _require("minilm")
    out = tmp_path / "out"
    assert main(["sweep", "a short sentence about cats", "--methods", "tome", "evit", "--ratios", "0.25", "0.95",
                 "--runs", "1", "--warmup", "0", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 4
    reachable = [r for r in rows if not r["error"]]
    assert reachable and all(0 < float(r["cosine"]) <= 1.0001 for r in reachable)
    # 0.95 of 6 unprotected tokens (6) cannot go at most half per layer in 6 layers (5 can)
    assert [bool(r["error"]) for r in rows] == [False, True, False, True]
    assert (out / "sweep.html").exists() and (out / "sweep.png").exists()
    assert f"wrote {out}: 4 rows (2 not reachable)" in capsys.readouterr().out


def test_bad_image_path(tmp_path):
    code = _exit(["inspect", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")])
    assert isinstance(code, str) and "not found" in code  # printed to stderr, exit status 1
    assert not (tmp_path / "o").exists()


def test_bad_method_options(tmp_path):
    code = _exit(["inspect", "some words", "--method-options", "{threshold: 0.9}", "--out", str(tmp_path / "o")])
    assert isinstance(code, str) and code.startswith("error: --method-options must be JSON")
