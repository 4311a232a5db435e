"""The Video tab's question section, with a tiny random SmolVLM / LLaVA-OneVision in place of a hub model."""
from __future__ import annotations

import gradio as gr
import pytest
import torch

from tests import tiny
from tests.inputs.clips import square_clip
from tests.inputs.test_video import write_clip
from tomviz.models import hub
from tomviz.models.vlm import wrap
from tomviz.ui import video_question


@pytest.fixture(scope="module", params=["smolvlm", "onevision"])
def loaded(request):
    torch.manual_seed(0)
    model, processor = tiny.smolvlm() if request.param == "smolvlm" else tiny.onevision(image_size=64)
    return wrap(request.param, model, processor)


@pytest.fixture
def clip(tmp_path):
    frames, _ = square_clip(frames=6, side=64, square=16, step=8)
    path = tmp_path / "square.mp4"
    write_clip(path, frames)
    return str(path)


def test_notice_says_plainly_that_it_needs_the_hub(monkeypatch):
    monkeypatch.setattr(hub, "hub_unreachable", lambda: "HF_HUB_OFFLINE is set")
    monkeypatch.setattr(hub, "is_cached", lambda model: False)
    notice = video_question.question_notice()
    assert "cannot reach the Hugging Face hub" in notice and "LLaVA-OneVision or SmolVLM2" in notice
    assert "rest of the Video tab works offline" in notice
    monkeypatch.setattr(hub, "is_cached", lambda model: True)
    assert video_question.question_notice() == ""
    monkeypatch.setattr(hub, "hub_unreachable", lambda: None)
    assert video_question.question_notice() == ""


@pytest.mark.parametrize("place, method", [("boundary", "holitom"), ("llm", "holitom"), ("llm", "dycoke")])
def test_ask_about_the_clip(loaded, clip, monkeypatch, place, method):
    monkeypatch.setattr(video_question.tomviz, "load", lambda name, untrusted=False: loaded)
    out = video_question.ask_clip(clip, None, 4, "what is in this image ?", place=place, method=method, ratio=0.5,
                                  layer=2 if place == "llm" else None, max_new_tokens=2)
    assert "**unreduced**" in out.answers and "**reduced**" in out.answers
    assert out.strip.size[0] > 0 and "the LLM receives" in out.counts
    if method == "dycoke":
        assert "per decoding step" in out.counts


def test_errors_are_plain(loaded, clip, monkeypatch):
    monkeypatch.setattr(video_question.tomviz, "load", lambda name, untrusted=False: loaded)
    with pytest.raises(gr.Error, match="question is empty"):
        video_question.ask_clip(clip, None, 4, "  ")
    with pytest.raises(gr.Error, match="layer must be"):
        video_question.ask_clip(clip, None, 4, "what ?", place="llm", method="holitom")  # k = 18 of 3 layers

    def offline(name, untrusted=False):
        raise video_question.tomviz.ModelLoadError(f"{name}: the Hugging Face hub cannot be reached")

    monkeypatch.setattr(video_question.tomviz, "load", offline)
    with pytest.raises(gr.Error, match="hub cannot be reached"):
        video_question.ask_clip(clip, None, 4, "what ?")


def test_method_list_follows_the_place():
    assert [name for _, name in video_question.question_methods("llm")] == ["fastv", "holitom", "dycoke"]
    assert "framefusion" in [name for _, name in video_question.question_methods("boundary")]
    assert "tempme" not in [name for _, name in video_question.question_methods("boundary")]  # inside the encoder
