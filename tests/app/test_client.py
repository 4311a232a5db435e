"""End to end through gradio_client against the launched app: both tabs, both endpoints, bad input."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tomviz.trace import Trace
from tomviz.ui.image_tab import ImageOutputs
from tests import tiny

ASSETS = Path(__file__).resolve().parents[2] / "assets"
CAT = str(ASSETS / "chelsea.png")

# outputs of /inspect_image: ImageOutputs' fields in order, less the session (gradio_client does not return state)
OVERLAY, STRIP, CLUSTER, HEAT, COUNTS, SPEED, GFLOPS, FIDELITY, SUMMARY, LAYER = (
    ImageOutputs._fields.index(name) - 1
    for name in ("overlay", "strip", "cluster", "heat", "counts", "speed", "gflops", "fidelity", "summary", "layer"))


def _ok_image(client, path: str = CAT, ratio: float = 0.5, **kw):
    return client.predict(image=handle_file(path), ratio=ratio, api_name="/inspect_image", **kw)


def test_inspect_image_returns_every_output(client):
    out = _ok_image(client, ratio=0.5)
    assert len(out) == 10
    for i in (OVERLAY, STRIP, HEAT):
        assert Image.open(out[i]).size[0] > 50
    summary = out[SUMMARY]
    assert summary["model"] == "dinov2-small" and summary["num_layers"] == 12
    counts = summary["token_counts"]
    assert counts[0] == 257 and counts[-1] == 257 - round(0.5 * 256)
    assert 0.9 < summary["fidelity"]["cosine"] <= 1.0 + 1e-6
    speed = summary["speed"]
    assert speed["speedup"] == pytest.approx(speed["unmerged_ms"] / speed["merged_ms"])
    assert speed["merged_gflops_total"] < speed["unmerged_gflops_total"]
    assert summary["schedule"] == "constant" and sum(summary["removed_per_layer"]) == 128
    assert "speed-up" in out[SPEED] and "Cosine" in out[FIDELITY]
    assert Image.open(out[CLUSTER]).format == "PNG"  # the cluster map: a picture (clickable in the page)


def test_ratio_zero_is_the_unmerged_model(client):
    summary = _ok_image(client, ratio=0.0)[SUMMARY]
    assert summary["token_counts"] == [257] * 13
    assert summary["fidelity"]["cosine"] == pytest.approx(1.0, abs=1e-5)


def test_layer_change_rerenders_from_the_stored_trace(client):
    first = _ok_image(client, ratio=0.7)
    early = client.predict(layer=1, opacity=1.0, api_name="/render_image_layer")
    late = client.predict(layer=12, opacity=1.0, api_name="/render_image_layer")
    assert len(early) == 3
    assert not np.array_equal(np.asarray(Image.open(early[1])), np.asarray(Image.open(late[1])))  # the cluster map
    assert not np.array_equal(np.asarray(Image.open(early[0])), np.asarray(Image.open(late[0])))
    assert first[SUMMARY]["token_counts"][-1] < 257


def test_downloads_load_without_a_model(client):
    _ok_image(client, ratio=0.5)
    files = client.predict(layer=4, opacity=0.8, api_name="/image_downloads")
    names = sorted(Path(f).name for f in files)
    assert "trace.json" in names and "trace.npz" in names and "layers.png" in names
    for f in files:
        if f.endswith((".json", ".npz")):
            assert Trace.load(f).token_counts()[-1] == 129


def test_inspect_text_colours_merged_tokens(client):
    out = client.predict(text="The cat sat on the mat and the dog sat on the log.", ratio=0.6, api_name="/inspect_text")
    highlights, table, summary = out[0], out[1], out[-2]
    tokens = [h["token"] for h in highlights]
    assert tokens[0] == "[CLS]" and len(tokens) == summary["token_counts"][0]
    assert any(h["class_or_confidence"] for h in highlights)  # some tokens merged
    assert summary["model"] == "minilm" and 0.5 < summary["fidelity"]["cosine"] <= 1.0 + 1e-6
    assert table["headers"] == ["group", "size", "tokens"]
    layer = client.predict(layer=1, api_name="/render_text_layer")
    assert len(layer) == 3


def test_long_prompt_is_truncated_and_says_so(client):
    summary = client.predict(text="merge " * 700, ratio=0.3, api_name="/inspect_text")[-2]  # 4200 characters, 700 tokens
    assert summary["token_counts"][0] == 512
    assert any("truncated" in note for note in summary["notes"])


# --- bad input: a clear message, and the server keeps serving --------------------------------------
def _png_bytes(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kw)
    return buffer.getvalue()


def _bomb_png() -> bytes:
    """A valid PNG header declaring 30000×30000 pixels (900 MP) with almost no data."""
    raw = _png_bytes(Image.new("L", (1, 1)))
    ihdr_data = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    ihdr = struct.pack(">I", 13) + b"IHDR" + ihdr_data + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr_data))
    return raw[:8] + ihdr + raw[8 + 25:]


BAD_IMAGES = {
    "text.png": b"this is not an image at all",
    "empty.png": b"",
    "truncated.png": _png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)))[:60],
    "bomb.png": _bomb_png(),
    "tiny.png": _png_bytes(Image.new("RGB", (4, 4))),
    "sliver.png": _png_bytes(Image.new("RGB", (2000, 20))),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_images_get_a_clear_error_and_the_server_keeps_serving(client, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_IMAGES[name])
    with pytest.raises(AppError) as info:
        _ok_image(client, str(path))
    message = str(info.value).lower()
    assert any(word in message for word in ("image", "pixels", "file", "empty")), message
    assert _ok_image(client, ratio=0.3)[SUMMARY]["token_counts"][0] == 257


def _awkward_images(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    photo = Image.open(CAT).convert("RGB").resize((96, 64))
    out = {}
    out["16bit.png"] = Image.fromarray((rng.random((64, 96)) * 65535).astype(np.uint16))
    out["cmyk.jpg"] = photo.convert("CMYK")
    out["alpha.png"] = photo.convert("RGBA")
    out["grey.png"] = photo.convert("L")
    out["palette.png"] = photo.convert("P")
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    paths = {}
    for name, image in out.items():
        paths[name] = tmp_path / name
        image.save(paths[name])
    paths["animated.gif"] = tmp_path / "animated.gif"
    frames[0].save(paths["animated.gif"], save_all=True, append_images=frames[1:], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    paths["rotated.jpg"] = tmp_path / "rotated.jpg"
    photo.save(paths["rotated.jpg"], exif=exif)
    return paths


def test_awkward_but_valid_images_work(client, tmp_path):
    for name, path in _awkward_images(tmp_path).items():
        out = _ok_image(client, str(path), ratio=0.4)
        assert out[SUMMARY]["token_counts"][0] == 257, name
        if name == "rotated.jpg":  # EXIF orientation applied: the 96×64 photo is shown 64 wide, 96 high
            width, height = Image.open(out[OVERLAY]).size
            assert height > width


@pytest.mark.parametrize("ratio", [-0.1, 0.96, 1.5])
def test_out_of_range_ratios_are_refused_clearly(client, ratio):
    with pytest.raises(AppError, match=r"(?i)(ratio|greater|less|maximum|minimum)"):
        _ok_image(client, ratio=ratio)
    with pytest.raises(AppError, match=r"(?i)(ratio|greater|less|maximum|minimum)"):
        client.predict(text="hello world", ratio=ratio, api_name="/inspect_text")


@pytest.mark.parametrize("model", ["not a model!!", "minilm", str(ASSETS)])
def test_unknown_or_wrong_models_are_refused_clearly(client, model):
    with pytest.raises(AppError) as info:
        _ok_image(client, model=model)
    assert "model" in str(info.value).lower() or "text" in str(info.value).lower()
    with pytest.raises(AppError):
        client.predict(text="hello world", ratio=0.5, model="dinov2-small", api_name="/inspect_text")


@pytest.mark.parametrize("text", ["", "   \n "])
def test_empty_prompt_is_refused_clearly(client, text):
    with pytest.raises(AppError, match="(?i)empty"):
        client.predict(text=text, ratio=0.5, api_name="/inspect_text")
    assert client.predict(text="still serving", ratio=0.5, api_name="/inspect_text")[-2]["model"] == "minilm"


def test_cleared_image_resets_every_output_without_error():
    from app import demo
    from tomviz.ui.image_tab import inspect_image

    wired = next(d for d in demo.config["dependencies"] if d.get("api_name") == "inspect_image")
    outputs = inspect_image(None)
    assert len(outputs) == len(wired["outputs"])  # session + 9 views + the layer slider
    assert outputs.session is None and outputs.overlay is None and outputs.summary is None


def test_local_classifier_folder_shows_top5_labels(client, tmp_path, monkeypatch):
    """A local folder the operator allows (TOMVIZ_LOCAL_MODELS) loads like a hub id; classifiers get top-5 labels."""
    import json

    labels = [f"class {i}" for i in range(7)]
    tiny.vit(classifier=labels, num_hidden_layers=2, num_attention_heads=2).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    monkeypatch.setenv("TOMVIZ_LOCAL_MODELS", str(tmp_path))  # the in-process server reads it per call
    out = _ok_image(client, ratio=0.5, model=str(tmp_path), layer=2)
    fidelity = out[SUMMARY]["fidelity"]
    assert len(fidelity["top_merged"]) == len(fidelity["top_unmerged"]) == 5
    assert fidelity["top_unmerged"][0][0].startswith("class ")
    assert "| 1 |" in out[FIDELITY]
    assert out[SUMMARY]["token_counts"][0] == 17 and out[LAYER]["maximum"] == 2  # 2 layers: slider follows


def test_huge_image_is_downscaled_not_refused(client, tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (6000, 4000), (120, 60, 200)).save(path, quality=70)
    out = _ok_image(client, str(path), ratio=0.3)
    assert out[SUMMARY]["token_counts"][0] == 257
    assert max(Image.open(out[OVERLAY]).size) <= 448


def test_layer_beyond_the_model_is_clamped(client):
    out = _ok_image(client, ratio=0.5, layer=40)
    assert out[LAYER]["value"] == 12
    assert len(client.predict(layer=99, api_name="/render_image_layer")) == 3


def test_a_clicked_patch_stays_selected_through_a_model_run():
    """inspect_image draws the selection itself (no second redraw after the run); the opacity slider
    redraws the overlay only, and nothing when a group is selected (that overlay has no opacity)."""
    from tomviz.render.groups import cluster_picture, patch_groups
    from tomviz.ui.image_tab import (
        LINEAGE_HINT, after_run, inspect_image, layer_strip, render_image_opacity,
    )

    first = inspect_image(CAT, 0.5)
    token = first.session.trace.num_protected + 40
    again = inspect_image(CAT, 0.7, layer=4, session=first.session, selected=token)
    trace = again.session.trace
    assert np.array_equal(np.asarray(again.overlay), np.asarray(cluster_picture(again.session.image, patch_groups(trace, 3, token))))
    assert np.array_equal(np.asarray(again.strip), np.asarray(layer_strip(again.session, token)))
    kept, lineage, link = after_run(again.session, token, "chelsea.png", "dinov2-small", "tome", "constant", 0.7, 4)
    assert kept == token and "patch" in lineage and "ratio=0.7" in link and "layer=4" in link and "example=chelsea.png" in link
    assert after_run(again.session, trace.num_input_tokens + 3, None, "dinov2-small", "tome", "constant", 0.7, 4)[:2] \
        == (None, LINEAGE_HINT)
    assert isinstance(render_image_opacity(4, 0.3, again.session, token), dict)  # gr.skip()
    assert render_image_opacity(4, 0.3, again.session, None).size == again.overlay.size
