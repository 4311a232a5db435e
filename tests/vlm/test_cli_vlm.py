"""``python -m tomviz inspect IMAGE --question ... --model VLM-FOLDER``."""
from __future__ import annotations

import json

from tests import tiny
from tomviz.cli import main


def test_cli_question(tmp_path):
    folder = tiny.saved_smolvlm(tmp_path / "model")
    tiny.photo().save(tmp_path / "photo.png")
    out = tmp_path / "out"
    assert main([
        "inspect", str(tmp_path / "photo.png"), "--question", "what is in this image ?", "--model", str(folder),
        "--method", "downsample", "--ratio", "0.75", "--max-new-tokens", "3", "--out", str(out),
    ]) == 0
    summary = json.loads((out / "answers.json").read_text())
    assert summary["token_counts"]["visual"] == 16 and summary["token_counts"]["llm_input"] == 4
    assert {"answer", "reference_answer", "fidelity", "timings"} <= set(summary)
    assert (out / "trace_boundary.npz").exists() and (out / "reaches_llm_tile00.png").exists()


def test_cli_question_with_vtu(tmp_path):
    model, processor = tiny.llava()
    loaded_folder = tmp_path / "model"
    model.save_pretrained(loaded_folder)
    processor.save_pretrained(loaded_folder)
    tiny.photo().save(tmp_path / "photo.png")
    out = tmp_path / "out"
    assert main([
        "inspect", str(tmp_path / "photo.png"), "--question", "what is in this image ?", "--model", str(loaded_folder),
        "--method", "tome", "--ratio", "0.5", "--vtu", "--max-new-tokens", "3", "--out", str(out),
    ]) == 0
    summary = json.loads((out / "answers.json").read_text())
    assert summary["vtu"] is True and summary["token_counts"]["llm_input"] == summary["token_counts"]["visual"] // 2
