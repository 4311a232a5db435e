"""The Scores tab's services without gradio: one model run, then a Banzhaf or image × text estimate, on tiny models."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import tomviz
from tests.scores.conftest import clip, clip_tokenizer, photo, vit_classifier  # noqa: F401 - fixtures
from tomviz import score_analysis
from tomviz.score_analysis import ScoreSession, compute_banzhaf, compute_hbi, groups_layer
from tomviz.scores.banzhaf import banzhaf


def _load_as(monkeypatch, loaded) -> list[tuple[str, bool]]:
    """``tomviz.load`` returns ``loaded``; the calls (name, untrusted) are recorded."""
    calls = []

    def load(name, untrusted=False):
        calls.append((name, untrusted))
        return loaded

    monkeypatch.setattr(tomviz, "load", load)
    return calls


@pytest.mark.parametrize("layer, num_layers, expected", [
    (1, 4, 0), (3, 4, 2),  # "groups after layer k" → k - 1
    (0, 4, 0), (-5, 4, 0),  # below the first layer: the first
    (4, 4, 2), (99, 4, 2),  # the last layer has nothing after it: the second-to-last
    (1.6, 12, 1), (10.4, 12, 9),  # a slider's float rounds
])
def test_groups_layer_clamps_to_a_layer_with_one_after_it(layer, num_layers, expected):
    assert groups_layer(layer, num_layers) == expected


def test_banzhaf_equals_the_estimate_on_a_direct_run(monkeypatch, vit_classifier, photo):
    loaded = tomviz.load(vit_classifier)
    calls = _load_as(monkeypatch, loaded)
    seen = []
    session = compute_banzhaf(" tiny ", photo, None, ratio=0.9, layer=2, samples=64, exact=True, seed=0,
                              progress=lambda fraction, message: seen.append(fraction))
    assert calls == [("tiny", True)]  # the name stripped, and untrusted: it comes from a visitor
    assert isinstance(session, ScoreSession) and session.result.layer == 1 and session.result.exact
    direct = banzhaf(tomviz.inspect(loaded, photo, ratio=0.9, keep_hidden=True, full_attention=True), 1, exact=True)
    assert np.allclose(session.result.values, direct.values, atol=1e-5)
    assert session.rollout.shape == (4, 4) and session.image.size[0] > 0 and seen[-1] == 1.0


def test_banzhaf_refuses_a_missing_input(monkeypatch, vit_classifier):
    _load_as(monkeypatch, tomviz.load(vit_classifier))
    with pytest.raises(ValueError, match="upload an image"):
        compute_banzhaf("tiny", None, "a prompt is not an image", 0.5, 2, 64, False, 0)
    _load_as(monkeypatch, SimpleNamespace(modality="text"))  # a text model: refused before any run
    with pytest.raises(ValueError, match="type a prompt"):
        compute_banzhaf("tiny-text", "photo.png", "   ", 0.5, 2, 64, False, 0)


def test_hbi_on_a_tiny_clip(monkeypatch, clip, clip_tokenizer, photo):
    loaded = tomviz.load(clip)
    loaded.tokenizer = clip_tokenizer
    calls = _load_as(monkeypatch, loaded)
    session = compute_hbi("tiny-clip", photo, "a cat", ratio=0.3, layer=2, samples=64, exact=False, seed=0)
    result = session.result
    assert calls == [("tiny-clip", True)] and result.layer == 1 and result.words == ["a", "cat"]
    assert result.cross.shape == (result.num_groups, 2) and session.rollout is None
    with pytest.raises(ValueError, match="upload an image"):
        compute_hbi("tiny-clip", None, "a cat", 0.3, 2, 64, False, 0)


def test_hbi_refuses_a_model_without_a_text_tower(monkeypatch, vit_classifier, photo):
    _load_as(monkeypatch, tomviz.load(vit_classifier))
    with pytest.raises(ValueError, match="not a CLIP model"):
        compute_hbi("tiny", photo, "a cat", 0.3, 2, 64, False, 0)


def test_the_old_names_in_the_scores_tab_warn():
    from tomviz.ui import scores_tab

    for name in ("compute_banzhaf", "compute_hbi"):
        with pytest.warns(DeprecationWarning, match="removed in tomviz 0.2.0"):
            assert getattr(scores_tab, name) is getattr(score_analysis, name)
    with pytest.raises(AttributeError):
        scores_tab.compute_nothing  # noqa: B018
