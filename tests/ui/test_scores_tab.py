"""The Scores tab's handlers on tiny models (no browser, no hub)."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest

import tomviz
from tomviz.ui import scores_tab


def test_banzhaf_handler_on_a_tiny_classifier(monkeypatch, vit_classifier, photo):
    loaded = tomviz.load(vit_classifier)
    monkeypatch.setattr(scores_tab.tomviz, "load", lambda name, untrusted: loaded)  # the tab must say the name is untrusted
    seen = []
    out = scores_tab.score_banzhaf("tiny", photo, None, ratio=0.3, layer=2, samples=64, top_k=3,
                                   progress=lambda f, desc=None: seen.append(f))
    session = out.session
    assert out.rollout.size == out.heat.size == session.image.size and session.rollout.shape == (4, 4)
    assert isinstance(session.result, tomviz.scores.BanzhafResult) and session.result.layer == 1
    assert out.pairs_img.size[0] > 0 and out.tokens is None  # an image model: no token view
    n = session.result.num_groups
    assert len(out.values.data[0].y) == n and np.asarray(out.matrix.data[0].z).shape == (n, n)
    assert len(out.pairs) == 3 and "logit of class" in out.summary and f"**{n} players**" in out.summary
    assert seen[-1] == 1.0
    again = scores_tab.rerender_banzhaf(5, session)
    assert len(again.pairs) == 5 and again.summary == out.summary
    assert scores_tab.rerender_banzhaf(5, None) == scores_tab.EMPTY_BANZHAF_VIEWS
    with pytest.raises(gr.Error):
        scores_tab.score_banzhaf("tiny", None, None, progress=lambda *a, **k: None)


def test_hbi_says_plainly_when_the_hub_cannot_be_reached(monkeypatch, photo):
    def unreachable(name, untrusted):
        raise tomviz.ModelLoadError(f"cannot load model {name!r}: We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(scores_tab.tomviz, "load", unreachable)
    out = scores_tab.score_hbi(scores_tab.CLIP_MODEL, photo, "a cat", progress=lambda *a, **k: None)
    assert out.session is None and "cannot be reached" in out.summary and scores_tab.CLIP_MODEL in out.summary


def test_hbi_handler_on_a_tiny_clip(monkeypatch, clip, clip_tokenizer, photo):
    loaded = tomviz.load(clip)
    loaded.tokenizer = clip_tokenizer
    monkeypatch.setattr(scores_tab.tomviz, "load", lambda name, untrusted: loaded)  # the tab must say the name is untrusted
    out = scores_tab.score_hbi("tiny-clip", photo, "a cat", ratio=0.3, layer=2, samples=64, progress=lambda *a, **k: None)
    result = out.session.result
    assert result.words == ["a", "cat"] and [word.strip() for word, _ in out.words] == ["a", "cat"]
    assert out.heat.size == out.session.image.size and out.lines.size[0] > out.session.image.size[0] // 2
    assert np.asarray(out.cross.data[0].z).shape == (result.num_groups, 2)
    assert f"**{result.num_groups} image groups**" in out.summary


def test_tab_builds_with_both_endpoints():
    with gr.Blocks() as demo:
        scores_tab.build_scores_tab()
    names = {dep.api_name for dep in demo.fns.values()}
    assert {"score_banzhaf", "score_hbi"} <= names
