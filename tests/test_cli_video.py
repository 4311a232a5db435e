"""``python -m tomviz inspect CLIP --method holitom --ratio 0.9 --out DIR`` writes its outputs."""
from __future__ import annotations

import json

import pytest

import tomviz
from tomviz.cli import main
from tomviz.trace import Trace


def test_inspect_a_clip_writes_trace_stats_strip_and_mp4(tiny_frames_model, square_mp4, tmp_path, monkeypatch):
    monkeypatch.setattr(tomviz, "load", lambda name: tiny_frames_model)
    out = tmp_path / "out"
    assert main(["inspect", str(square_mp4), "--method", "holitom", "--ratio", "0.9", "--frames", "8", "--out", str(out),
                 "--method-options", '{"tau": 0.7}']) == 0
    assert {p.name for p in out.iterdir()} == {"trace.json", "trace.npz", "stats.json", "strip.png", "merge.mp4"}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["method"] == "holitom" and stats["method_options"] == {"tau": 0.7} and stats["frame_grid"] == [8, 8, 8]
    assert stats["token_counts"][0] == 512 and sum(stats["tokens_per_frame"]) == stats["token_counts"][-1]
    assert Trace.load(out / "trace.npz").frame_grid == (8, 8, 8)


def test_a_missing_or_broken_clip_is_an_error_message(tiny_frames_model, tmp_path, monkeypatch):
    monkeypatch.setattr(tomviz, "load", lambda name: tiny_frames_model)
    with pytest.raises(SystemExit, match="clip .* not found"):
        main(["inspect", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "o")])
    broken = tmp_path / "broken.webm"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(SystemExit, match="not a readable video"):
        main(["inspect", str(broken), "--method", "holitom", "--out", str(tmp_path / "o")])


def test_what_the_cli_reads_as_a_clip(tmp_path):
    from pathlib import Path

    from tomviz.cli_video import is_clip

    assert is_clip(Path("a.mp4")) and is_clip(Path("a.WEBM")) and is_clip(tmp_path)
    assert not is_clip(Path("a.png")) and not is_clip(Path("a.gif")) and not is_clip(Path("word " * 2000))


def test_sweep_refuses_a_clip(square_mp4, tmp_path):
    with pytest.raises(SystemExit, match="sweep takes images and texts"):
        main(["sweep", str(square_mp4), "--out", str(tmp_path / "o")])


def test_inspect_a_clip_with_a_videomae_folder(square_mp4, tmp_path):
    """``--model`` a VideoMAE (a saved tiny random one: the real loading code, as for a hub id): ToMe inside the
    encoder over its space-time tokens, one strip per layer with tubelets spanning 2 frames."""
    from tests import tiny

    tiny.videomae(classifier=["walk", "run"], seed=0).save_pretrained(tmp_path / "videomae")
    out = tmp_path / "out"
    assert main(["inspect", str(square_mp4), "--model", str(tmp_path / "videomae"), "--method", "tome",
                 "--ratio", "0.5", "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["method"] == "tome" and stats["frame_grid"] == [2, 4, 4] and stats["tubelet_size"] == 2
    assert stats["frames"] == 4 and stats["token_counts"] == [32, 28, 24, 20, 16]
    assert stats["gflops"] < stats["base_gflops"] and -1 <= stats["fidelity_cosine"] <= 1
    assert stats["top1_agree"] in (True, False) and [name for name, _ in stats["top_labels"]] in (["walk", "run"], ["run", "walk"])
    trace = Trace.load(out / "trace.npz")
    assert trace.num_layers == 4 and trace.frame_grid == (2, 4, 4)
    assert sorted(p.name for p in out.glob("strip_layer*.png")) == [f"strip_layer0{i}.png" for i in range(1, 5)]
    assert (out / "merge.mp4").stat().st_size > 0
    with pytest.raises(SystemExit, match="holitom"):  # a temporal method does not run inside the encoder
        main(["inspect", str(square_mp4), "--model", str(tmp_path / "videomae"), "--method", "holitom",
              "--out", str(tmp_path / "o")])


def test_a_hub_video_encoder_offline_is_an_error_message(square_mp4, tmp_path, monkeypatch):
    from tomviz.models.hub import ModelLoadError

    def unreachable(name):
        raise ModelLoadError(f"cannot load model {name!r}: the Hugging Face hub cannot be reached from this machine")

    monkeypatch.setattr(tomviz, "load", unreachable)
    with pytest.raises(SystemExit, match="error: cannot load model 'MCG-NJU/videomae-small-finetuned-kinetics': the "
                                         "Hugging Face hub cannot be reached"):
        main(["inspect", str(square_mp4), "--model", "MCG-NJU/videomae-small-finetuned-kinetics", "--method", "tome",
              "--out", str(tmp_path / "o")])


def test_inspect_a_clip_with_tempme_writes_every_layer(tiny_frames_model, square_mp4, tmp_path, monkeypatch):
    monkeypatch.setattr(tomviz, "load", lambda name: tiny_frames_model)
    out = tmp_path / "out"
    assert main(["inspect", str(square_mp4), "--method", "tempme", "--ratio", "0.5", "--frames", "8", "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["method"] == "tempme" and stats["in_encoder"] and len(stats["token_counts"]) == 5  # input + 4 blocks
    trace = Trace.load(out / "trace.npz")
    assert trace.num_layers == 4 and trace.meta["stages"][-1] == "layer 3"
    assert sorted(p.name for p in out.glob("strip_layer*.png")) == [f"strip_layer0{i}.png" for i in range(1, 5)]
    import av

    with av.open(str(out / "merge.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == trace.num_layers + 1
