"""The Video tab with a video encoder (a tiny random VideoMAE in place of a hub one), offline refusals and share
links (the example clip is real)."""
from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import parse_qsl

import gradio as gr
import numpy as np
import pytest

from tomviz.models import hub
import tomviz
from tests import tiny
from tomviz.ui import video_tab
from tomviz.ui.share import NotThisTab, parse_view

VIDEOMAE = "MCG-NJU/videomae-small-finetuned-kinetics"


@pytest.fixture(scope="module")
def loaded_videomae():
    return tomviz.load(tiny.videomae(classifier=["walk", "run"], seed=0))


@pytest.fixture
def tab(loaded_videomae, monkeypatch):
    frames_model = tomviz.load(tiny.dinov2(seed=0, patch_size=4))
    names = []

    def load(name, untrusted=False):
        names.append(name)
        return loaded_videomae if name == VIDEOMAE else frames_model

    monkeypatch.setattr(video_tab.tomviz, "load", load)
    monkeypatch.setattr(hub, "hub_unreachable", lambda: None)
    video_tab.loaded_names = names
    return video_tab


def click(session, frame, x=1, y=1):
    left, top = video_tab.strip_layout(session.video.frames).origin(frame)
    return gr.SelectData(None, {"index": [left + x, top + y], "value": None})


def test_videomae_shows_tubelet_groups_per_layer(tab):
    out = tab.inspect_clip(None, "world.mp4", "tome", 0.5, 16, 0.8, 8, None, VIDEOMAE)
    trace = out.session.trace
    assert trace.num_layers == 4 and trace.frame_grid == (2, 4, 4) and out.session.video.num_frames == 4
    assert trace.token_counts() == [32, 28, 24, 20, 16]
    assert "32 (2 tubelets of 2 frames × 4×4) → **16** after 4 layers" in out.text
    assert "ms per clip merged" in out.text and "GFLOPs" in out.text and "top-1 class" in out.text
    assert out.layer.visible is True and out.layer.maximum == 4 and list(out.counts.data[0].y) == [32, 28, 24, 20, 16]
    assert out.strip.size == tab.strip_layout(out.session.video.frames).size
    first, _, at_first = tab.show_layer(out.session, 1)
    assert not np.array_equal(np.asarray(first), np.asarray(out.strip))  # after layer 1 fewer groups than after 4
    assert (out.session.stage, at_first.stage) == (-1, 0)
    picture, lineage = tab.select_token(out.session, click(out.session, 1))  # frame 1: tubelet 0, after layer 4
    assert "token (tubelet 0: frames 0–1, row 1, col 1)" in lineage and "size after each layer: 1 →" in lineage
    assert not np.array_equal(np.asarray(picture), np.asarray(out.strip))
    early, _ = tab.select_token(at_first, click(out.session, 1))  # the same click after layer 1
    assert not np.array_equal(np.asarray(early), np.asarray(picture))
    assert dict(parse_qsl(out.link[1:])) == {"tab": "video", "model": VIDEOMAE, "method": "tome", "ratio": "0.5",
                                             "frames": "16", "tau": "0.8", "segments": "8", "example": "world.mp4"}


def test_videomae_refuses_a_temporal_method_and_the_method_list_follows_the_model(tab):
    with pytest.raises(gr.Error, match="merges inside its encoder: pick one of tome"):
        tab.inspect_clip(None, "world.mp4", "holitom", 0.9, 16, 0.8, 8, None, VIDEOMAE)
    assert tab.pick_model(VIDEOMAE, "holitom").value == "tome"
    assert tab.pick_model("dinov2-small", "holitom").value == "holitom"
    assert {name for _, name in tab.method_choices(VIDEOMAE)} >= {"tome", "pitome", "random"}
    assert "subword" not in {name for _, name in tab.method_choices(VIDEOMAE)}


def test_offline_a_hub_model_says_it_needs_the_hub(tab, monkeypatch):
    monkeypatch.setattr(hub, "hub_unreachable", lambda: "HF_HUB_OFFLINE is set")
    monkeypatch.setattr(hub, "is_cached", lambda name: False)
    with pytest.raises(gr.Error, match=r"comes from the Hugging Face hub, which this server cannot reach \(HF_HUB_OFFLINE"):
        tab.inspect_clip(None, "world.mp4", "tome", 0.5, 16, 0.8, 8, None, VIDEOMAE)
    assert VIDEOMAE not in tab.loaded_names  # refused before any loading
    assert "Tokens" in tab.inspect_clip(None, "world.mp4", "holitom", 0.9, 8, 0.8, 8, None, "dinov2-small").text


def test_an_uploads_link_carries_the_settings_never_the_upload(tab, tmp_path):
    from tomviz.inputs.video import example_clips

    upload = tmp_path / "mine.mp4"
    upload.write_bytes(example_clips()["world.mp4"].read_bytes())
    out = tab.inspect_clip(str(upload), "world.mp4", "fastvid", 0.7, 8, 0.85, 3, None)
    params = dict(parse_qsl(out.link[1:]))
    assert "example" not in params and "mine" not in out.link and str(tmp_path) not in out.link
    assert params == {"tab": "video", "model": "dinov2-small", "method": "fastvid", "ratio": "0.7", "frames": "8",
                      "tau": "0.85", "segments": "3"}


def request(**params):
    return SimpleNamespace(query_params=params)


def test_opening_a_link_restores_the_settings_and_runs(tab):
    link = "?tab=video&model=dinov2-small&method=fastvid&ratio=0.7&frames=8&tau=0.85&segments=3&example=world.mp4"
    params = dict(parse_qsl(link[1:]))
    example, model, method, ratio, frames, tau, segments = tab.open_link(request(**params))
    assert (example, model, method.value, ratio, frames, tau, segments) == ("world.mp4", "dinov2-small", "fastvid", 0.7, 8, 0.85, 3)
    tab.linked_example(request(**params))  # the run follows
    out = tab.inspect_clip(None, example, method.value, ratio, frames, tau, segments, None, model)
    assert out.session.trace.meta["method_options"] == {"tau": 0.85, "segments": 3} and out.link == link
    defaults = tab.open_link(request(tab="video", example="world.mp4", ratio="7"))  # a refused ratio: the tab's
    assert (defaults[2].value, defaults[3]) == ("holitom", 0.9)
    assert tab.open_link(request(tab="video", model=VIDEOMAE))[2].value == "tome"
    with pytest.raises(NotThisTab):  # another tab's link, or none: nothing opens here, no model runs
        tab.open_link(request(tab="image", example="chelsea.png"))
    with pytest.raises(NotThisTab):
        tab.open_link(None)
    with pytest.raises(NotThisTab):  # a link without a known clip restores its settings but does not run
        tab.linked_example(request(tab="video", method="rlt"))


def test_untrusted_link_parameters_are_checked():
    clips = ["/site-packages/gradio/media_assets/videos/world.mp4", "/x/muted_b.mp4"]
    view = parse_view({"tab": "video", "example": "../../etc/passwd.mp4", "method": "holitom", "frames": "9999",
                       "tau": "nan", "segments": "-2", "model": "/etc"}, clips)
    assert (view.tab, view.example, view.method, view.frames, view.tau, view.segments, view.model) == \
        ("video", None, "holitom", None, None, None, None)
    assert any("the example clips are world.mp4, muted_b.mp4" in p for p in view.problems)  # names, never paths
    assert len(view.problems) == 5
    assert parse_view({"tab": "video", "method": "tome"}, clips).method == "tome"
    assert parse_view({"tab": "image", "method": "holitom"}, clips).problems  # a temporal method is for clips only
    good = parse_view({"tab": "video", "frames": "4", "tau": "1", "segments": "32", "example": "muted_b.mp4"}, clips)
    assert (good.frames, good.tau, good.segments, good.example, good.problems) == (4, 1.0, 32, "muted_b.mp4", [])
