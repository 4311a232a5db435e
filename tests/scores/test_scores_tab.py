"""The Scores tab's handlers on tiny models (no browser, no hub)."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import tomviz
from tomviz.ui import scores_tab


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_banzhaf_handler_on_a_tiny_classifier(monkeypatch, vit_classifier, photo):
    loaded = tomviz.load(vit_classifier)
    monkeypatch.setattr(scores_tab.tomviz, "load", lambda name, untrusted: loaded)  # the tab must say the name is untrusted
    seen = []
    out = scores_tab.score_banzhaf("tiny", photo, None, ratio=0.3, layer=2, samples=64, top_k=3,
                                   progress=lambda f, desc=None: seen.append(f))
    session, heat, tokens, values, matrix, pairs_img, pairs, summary, rollout = out
    assert isinstance(rollout, Image.Image) and session.rollout.shape == (4, 4)
    assert isinstance(session.result, tomviz.scores.BanzhafResult) and session.result.layer == 1
    assert isinstance(heat, Image.Image) and isinstance(pairs_img, Image.Image) and tokens is None
    assert len(pairs) == 3 and "logit of class" in summary and seen[-1] == 1.0
    again = scores_tab.rerender_banzhaf(5, session)
    assert len(again[5]) == 5
    with pytest.raises(gr.Error):
        scores_tab.score_banzhaf("tiny", None, None, progress=lambda *a, **k: None)


def test_hbi_says_plainly_when_the_hub_cannot_be_reached(monkeypatch, photo):
    def unreachable(name, untrusted):
        raise tomviz.ModelLoadError(f"cannot load model {name!r}: We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(scores_tab.tomviz, "load", unreachable)
    out = scores_tab.score_hbi(scores_tab.CLIP_MODEL, photo, "a cat", progress=lambda *a, **k: None)
    assert out[0] is None and "cannot be reached" in out[-1] and scores_tab.CLIP_MODEL in out[-1]


def test_hbi_handler_on_a_tiny_clip(monkeypatch, clip, clip_tokenizer, photo):
    loaded = tomviz.load(clip)
    loaded.tokenizer = clip_tokenizer
    monkeypatch.setattr(scores_tab.tomviz, "load", lambda name, untrusted: loaded)  # the tab must say the name is untrusted
    out = scores_tab.score_hbi("tiny-clip", photo, "a cat", ratio=0.3, layer=2, samples=64, progress=lambda *a, **k: None)
    session, lines, cross, words, heat, rows, summary = out
    assert session.result.words == ["a", "cat"]
    assert isinstance(lines, Image.Image) and isinstance(heat, Image.Image) and len(words) == 2
    assert "image groups" in summary


def test_tab_builds():
    with gr.Blocks() as demo:
        scores_tab.build_scores_tab()
    assert demo is not None
