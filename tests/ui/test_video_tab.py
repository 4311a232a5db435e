"""The Video tab's handlers, with a tiny random DINOv2 in place of the embedded one (the example clip is real)."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest

import tomviz
from tests import tiny
from tomviz.ui import video_tab


@pytest.fixture(scope="module")
def loaded():
    return tomviz.load(tiny.dinov2(seed=0, patch_size=4))


@pytest.fixture
def tab(loaded, monkeypatch):
    monkeypatch.setattr(video_tab.tomviz, "load", lambda name, untrusted=False: loaded)
    return video_tab


def test_inspect_an_example_clip_then_change_the_method_without_the_encoder(tab):
    out = tab.inspect_clip(None, "world.mp4", "holitom", 0.9, 8, 0.8, 8, None)
    assert out.strip.size == tab.strip_layout(out.session.video.frames).size
    assert "**Tokens** 512 (8 frames × 8×8)" in out.text and "Fidelity" in out.text and "ms/frame" in out.text
    assert out.video.endswith(".mp4") and list(out.counts.data[1].y) == out.session.trace.tokens_per_frame().tolist()
    features = tab.cached_features(out.session.key)
    again = tab.inspect_clip(None, "world.mp4", "fastvid", 0.9, 8, 0.9, 3, out.session)
    assert again.session.video is out.session.video  # the same clip: not decoded again ...
    assert tab.cached_features(again.session.key) is features  # ... nor encoded
    assert again.session.trace.meta["method_options"] == {"tau": 0.9, "segments": 3}


def test_the_feature_cache_stays_bounded(tab, monkeypatch):
    monkeypatch.setattr(tab, "_FEATURES", type(tab._FEATURES)())
    for index in range(tab.FEATURE_CACHE_SIZE + 2):
        tab.keep_features(("m", str(index), 8), object())
    assert list(tab._FEATURES) == [("m", str(i), 8) for i in range(2, tab.FEATURE_CACHE_SIZE + 2)]
    assert tab.cached_features(("m", "0", 8)) is None and tab.cached_features(("m", "2", 8)) is not None


def test_a_click_on_the_strip_selects_a_group(tab):
    out = tab.inspect_clip(None, "world.mp4", "holitom", 0.9, 8, 0.8, 8, None)
    layout = tab.strip_layout(out.session.video.frames)
    left, top = layout.origin(0)
    event = gr.SelectData(None, {"index": [left + 1, top + 1], "value": None})
    picture, lineage = tab.select_token(out.session, event)
    assert "token (frame 0, row 1, col 1)" in lineage
    assert not np.array_equal(np.asarray(picture), np.asarray(out.strip))


def test_bad_uploads_give_clear_messages(tab, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(gr.Error, match="not a readable video"):
        tab.inspect_clip(str(broken), None, "holitom", 0.9, 8, 0.8, 8, None)
    with pytest.raises(gr.Error, match="not a clip this tab reads"):
        tab.inspect_clip(str(tmp_path / "notes.txt"), None, "holitom", 0.9, 8, 0.8, 8, None)
    with pytest.raises(gr.Error, match="upload a clip or pick an example"):
        tab.inspect_clip(None, None, "holitom", 0.9, 8, 0.8, 8, None)


def test_every_clip_method_is_offered():
    assert {name for _, name in video_tab.method_choices()} == set(tomviz.merge.registry.names("clip"))


def test_tempme_shows_its_layers_and_the_strip_follows_the_slider(tab):
    out = tab.inspect_clip(None, "world.mp4", "tempme", 0.5, 8, 0.8, 8, None)
    assert out.session.trace.num_layers == 4 and "encoder with tempme" in out.text
    assert out.layer.maximum == 4 and out.layer.value == 4 and out.layer.visible
    first, _, session = tab.show_layer(out.session, 1)
    assert session.stage == 0 and np.asarray(first).shape == np.asarray(out.strip).shape
    assert not np.array_equal(np.asarray(first), np.asarray(out.strip))
    layout = tab.strip_layout(session.video.frames)
    left, top = layout.origin(0)
    picture, lineage = tab.select_token(session, gr.SelectData(None, {"index": [left + 1, top + 1], "value": None}))
    assert "after layer 0" in lineage
    assert tab.layer_slider(1).visible is False
