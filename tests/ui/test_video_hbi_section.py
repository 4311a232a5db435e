"""The Video tab's HBI (frames × words) section: its offline notice, its refusals and a run on a tiny random CLIP."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from tomviz.models import hub
import tomviz
from tests.inputs.clips import square_clip
from tomviz.inputs.video import Video
from tomviz.ui import video_hbi_section as section
from tomviz.ui import video_tab


class _Session:  # what the section reads of the Video tab's state: the sampled frames
    def __init__(self, frames: np.ndarray):
        self.video = Video(frames=frames, timestamps=tuple(range(len(frames))), fps=1.0, source_frames=len(frames),
                           indices=tuple(range(len(frames))))


def _no_progress(*args, **kwargs):
    return None


def test_the_offline_notice_says_plainly_that_hbi_needs_clip_from_the_hub(monkeypatch):
    monkeypatch.setattr(hub, "hub_unreachable", lambda: "HF_HUB_OFFLINE is set")
    monkeypatch.setattr(hub, "is_cached", lambda model: False)
    notice = section.hbi_hub_notice()
    assert "HBI needs CLIP from the Hugging Face hub" in notice and "HF\\_HUB\\_OFFLINE is set" in notice
    assert "rest of the Video tab works offline" in notice
    monkeypatch.setattr(hub, "is_cached", lambda model: True)  # cached weights load offline: no notice
    assert section.hbi_hub_notice() == ""
    monkeypatch.setattr(hub, "is_cached", lambda model: False)
    monkeypatch.setattr(hub, "hub_unreachable", lambda: None)
    assert section.hbi_hub_notice() == ""


def test_a_click_offline_answers_with_the_notice_not_an_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the real loading path, which must fail at once without the hub
    frames, _ = square_clip(frames=4, side=32)
    out = section.score_clip_text(_Session(frames), "a cat", section.CLIP_MODEL, progress=_no_progress)
    assert out.session is None and out.picture is None and "HBI needs CLIP from the Hugging Face hub" in out.summary


def test_without_an_inspected_clip_the_section_asks_for_one():
    with pytest.raises(gr.Error, match="inspect a clip first"):
        section.score_clip_text(None, "a cat", progress=_no_progress)


def test_a_run_on_a_tiny_clip(monkeypatch, clip, clip_tokenizer):
    loaded = tomviz.load(clip)
    loaded.tokenizer = clip_tokenizer
    def load(name, untrusted=False):
        assert untrusted  # a name typed on the web
        return loaded

    monkeypatch.setattr(section.score_analysis, "load_video_text", load)
    frames, _ = square_clip(frames=12, side=32, cut_at=6)
    out = section.score_clip_text(_Session(frames), "a cat on a mat", "tiny-clip", level=1, samples=64,
                                  progress=_no_progress)
    r = out.session.result
    assert isinstance(out.picture, Image.Image) and np.asarray(out.cross.data[0].z).shape == (3, 2)
    assert "**3 frame groups** of 12 frames × **2 word groups** of 5 words" in out.summary and "exact" in out.summary
    assert r.cross.shape == (3, 2)
    with pytest.raises(gr.Error, match="samples must be"):
        section.score_clip_text(_Session(frames), "a cat", "tiny-clip", samples=10**7, progress=_no_progress)


def test_the_video_tab_builds_with_the_section():
    with gr.Blocks() as demo:
        video_tab.build_video_tab()
    names = {dep.api_name for dep in demo.fns.values()}
    assert {"inspect_video", "score_video_hbi"} <= names
