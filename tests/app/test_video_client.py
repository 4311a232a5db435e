"""The Video tab through gradio_client against the launched app: world.mp4 with HoliTom at 0.9, a bad upload."""
from __future__ import annotations

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import tomviz
from tomviz.inputs.video import example_clips
from tomviz.render.video import frame_strip
from tomviz.ui.video_tab import VideoOutputs

STRIP, TEXT, VIDEO = (VideoOutputs._fields.index(name) - 1 for name in ("strip", "text", "video"))  # less the session


def _world(client, **kw):
    settings = dict(upload=None, example="world.mp4", method="holitom", ratio=0.9, frames=16, tau=0.8, segments=8)
    return client.predict(**{**settings, **kw}, api_name="/inspect_video")


def test_world_mp4_holitom_strip_equals_the_trace(client):
    out = _world(client)
    local = tomviz.inspect("dinov2-small", example_clips()["world.mp4"], method="holitom", ratio=0.9)
    expected = frame_strip(local.video.frames, local.trace)
    assert np.array_equal(np.asarray(Image.open(out[STRIP]).convert("RGB")), np.asarray(expected))
    assert f"→ **{local.token_counts()[-1]}**" in out[TEXT] and str(out[VIDEO]).endswith(".mp4")


def test_dropping_world_mp4_in_equals_picking_the_example(client):
    dropped = _world(client, upload=handle_file(str(example_clips()["world.mp4"])), example=None)
    picked = _world(client)
    assert dropped[TEXT].split("**Speed**")[0] == picked[TEXT].split("**Speed**")[0]  # tokens, groups, segments
    assert np.array_equal(np.asarray(Image.open(dropped[STRIP])), np.asarray(Image.open(picked[STRIP])))


def test_a_bad_upload_gets_a_clear_error_and_the_server_keeps_serving(client, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 256)
    with pytest.raises(AppError, match="not a readable video"):
        _world(client, upload=handle_file(str(broken)))
    assert "Tokens" in _world(client, ratio=0.5)[TEXT]


def test_hbi_section_offline_says_it_needs_clip_and_the_tab_keeps_serving(client, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the app runs in this process: its hub is out of reach
    _world(client, frames=8)  # the section plays the frames the tab sampled (this client's session)
    out = client.predict(text="a globe turning", model="openai/clip-vit-base-patch32", level=1, samples=64, seed=0,
                         api_name="/score_video_hbi")
    assert "HBI needs CLIP from the Hugging Face hub" in out[-1] and "rest of the Video tab works offline" in out[-1]
    assert "**Tokens**" in _world(client)[TEXT]
