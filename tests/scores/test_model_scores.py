"""Banzhaf values, HBI and attention on tiny random models: exact vs MSR, masking, mapping back."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tomviz
from tomviz.scores import attention
from tomviz.scores.game import model_game
from tomviz.scores.hbi import Words, hbi
from tests import tiny

R = [3, 3, 0, 0]  # 17 → 14 → 11 tokens, then no merging: 10 groups play after layer 1


def _image():
    torch.manual_seed(5)
    return torch.randn(1, 3, 32, 32)


def _msr_agrees(res, layer, **kw):
    exact = res.banzhaf(layer, exact=True, **kw)
    est = res.banzhaf(layer, samples=3000, seed=1, **kw)
    assert exact.samples == 2 ** exact.num_groups
    assert np.all(np.abs(est.values - exact.values) <= 3 * est.stderr + 1e-9)
    return exact, est


def test_vit_classifier_logit(vit_classifier):
    res = tomviz.inspect(vit_classifier, _image(), r=R, keep_hidden=True)
    exact, est = _msr_agrees(res, 1)
    cls = int(res.outputs.logits[0].argmax())
    assert exact.target.startswith(f"logit of class {cls}")
    np.testing.assert_array_equal(exact.groups, np.arange(1, 11))
    # nothing merges after layer 1, so the full coalition is the merged model's own logit
    assert exact.full_value == pytest.approx(float(res.outputs.logits[0, cls]), abs=1e-4)
    other = res.banzhaf(1, exact=True, target=(cls + 1) % 5)
    assert f"class {(cls + 1) % 5}" in other.target and not np.allclose(other.values, exact.values)
    with pytest.raises(ValueError):
        res.banzhaf(1, exact=True, target=99)


def test_error_shrinks_on_a_model(vit_classifier):
    res = tomviz.inspect(vit_classifier, _image(), r=R, keep_hidden=True)
    exact = res.banzhaf(1, exact=True).values
    err = [np.abs(res.banzhaf(1, samples=m, seed=2).values - exact).mean() for m in (64, 1024)]
    assert err[1] < err[0] / 2


def test_dinov2_cosine_and_mapping(dinov2):
    res = tomviz.inspect(dinov2, _image(), r=R, keep_hidden=True)
    exact, _ = _msr_agrees(res, 1)
    assert "unmerged" in exact.target
    tokens = exact.to_tokens()
    assert tokens.shape == (17,) and np.isnan(tokens[0])  # CLS is never a player
    groups = res.trace.groups(1)
    for k, g in enumerate(exact.groups):
        np.testing.assert_allclose(tokens[groups == g], exact.values[k], rtol=1e-6)
    shared = exact.to_tokens(share=True)
    np.testing.assert_allclose(np.nansum(shared), exact.values.sum(), rtol=1e-5)
    assert exact.to_grid().shape == (4, 4)
    pixels = exact.to_pixels(40, 24)
    assert pixels.shape == (40, 24) and pixels[0, 0] == exact.to_grid()[0, 0] and pixels[-1, -1] == exact.to_grid()[-1, -1]
    with pytest.raises(ValueError, match="last"):
        res.banzhaf(3)
    with pytest.raises(ValueError, match="too many"):
        res.banzhaf(0, exact=True)  # 13 players


def test_scores_function_needs_keep_hidden(dinov2):
    from tomviz.scores.banzhaf import banzhaf

    res = tomviz.inspect(dinov2, _image(), r=R)
    with pytest.raises(ValueError, match="keep_hidden"):
        banzhaf(res, 1)  # the InspectResult.banzhaf method reruns the forward instead


def test_bert_mean_excludes_absent_tokens(bert):
    ids = torch.randint(5, 99, (1, 14))
    res = tomviz.inspect(bert, ids, r=[3, 2, 0, 0], keep_hidden=True)
    _msr_agrees(res, 1)
    # at the last layer nothing runs: the value is the cosine of the size-weighted mean of the present tokens
    game = model_game(res, 3)
    hidden, sizes = res.state.hidden[3]
    rng = np.random.default_rng(0)
    masks = rng.random((6, len(game.groups))) < 0.5
    got = game(masks)
    ref = model_game(res, 3)(np.ones((1, len(game.groups)), bool))  # all present
    full = (hidden[0] * sizes[0]).sum(0) / sizes[0].sum()
    unmerged = tomviz.inspect(bert, ids).outputs.last_hidden_state[0].mean(0)
    for m, value in zip(masks, got):
        keep = np.concatenate([[True], m])
        h, s = hidden[0][keep], sizes[0][keep]
        mean = (h * s).sum(0) / s.sum()
        assert value == pytest.approx(float(torch.cosine_similarity(mean, unmerged, dim=0)), abs=1e-5)
    assert ref[0] == pytest.approx(float(torch.cosine_similarity(full, unmerged, dim=0)), abs=1e-5)


def test_clip_image_text(clip):
    res = tomviz.inspect(clip, _image(), r=R, keep_hidden=True)
    exact, _ = _msr_agrees(res, 1)
    assert "CLIP" in exact.target
    words = Words(
        input_ids=torch.tensor([[0, 5, 6, 7, 8, 1]]), attention_mask=torch.ones(1, 6, dtype=torch.long),
        words=["ab", "c", "d"], positions=[[1, 2], [3], [4]],
    )
    small = tomviz.inspect(clip, _image(), r=[4, 3, 0, 0], keep_hidden=True)  # 17 → 13 → 10: 9 groups + 3 words
    h_exact = hbi(small, words, layer=1, exact=True)
    h_est = hbi(small, words, layer=1, samples=3000, seed=3)
    assert h_exact.cross.shape == (9, 3) and h_exact.group_grid().shape == (4, 4)
    assert np.all(np.abs(h_est.values - h_exact.values) <= 3 * h_est.stderr + 1e-9)
    assert len(h_exact.top_pairs(4)) == 4
    assert h_est.words == ["ab", "c", "d"]


def test_clip_text_masking_is_real(clip):
    """An absent word changes the text embedding; masking every word leaves only start/end tokens."""
    ids = torch.tensor([[0, 5, 6, 7, 1]])
    full = clip.get_text_features(input_ids=ids, attention_mask=torch.ones_like(ids)).pooler_output
    masked = clip.get_text_features(input_ids=ids, attention_mask=torch.tensor([[1, 0, 1, 1, 1]])).pooler_output
    assert not torch.allclose(full, masked)


def test_cls_attention_and_rollout(dinov2):
    res = tomviz.inspect(dinov2, _image(), r=[3, 3, 2, 1], full_attention=True, cls_attention_heads=True)
    trace = res.trace
    for layer in range(4):
        spread = attention.cls_attention_to_input(trace, layer)
        assert spread.sum() == pytest.approx(1.0, abs=1e-4)  # shared by group size: still a distribution
        assert attention.cls_attention(trace, layer, head=2).shape == (trace.layers[layer].num_tokens_in,)
    heads = np.stack([attention.cls_attention(trace, 2, head=h) for h in range(4)])
    np.testing.assert_allclose(heads.mean(0), attention.cls_attention(trace, 2), atol=1e-5)
    roll = attention.rollout(trace)
    assert roll.shape == (trace.layers[-1].num_tokens, 17)
    np.testing.assert_allclose(roll.sum(1), 1.0, atol=1e-5)
    assert attention.rollout_grid(trace).shape == (4, 4)
    with pytest.raises(ValueError, match="full_attention"):
        attention.rollout(tomviz.inspect(dinov2, _image(), r=R).trace)


def test_rollout_without_merging_is_plain_rollout(dinov2):
    trace = tomviz.inspect(dinov2, _image(), r=0, full_attention=True).trace
    expected = np.eye(17)
    for lt in trace.layers:
        a = 0.5 * np.eye(17) + 0.5 * lt.attention
        expected = (a / a.sum(1, keepdims=True)) @ expected
    np.testing.assert_allclose(attention.rollout(trace), expected, atol=1e-6)


def test_split_words(clip_tokenizer):
    from tomviz.scores.hbi import split_words

    words = split_words(clip_tokenizer, "a cat")
    assert words.words == ["a", "cat"] and words.positions == [[1], [2, 3, 4]]
    with pytest.raises(ValueError, match="empty"):
        split_words(clip_tokenizer, "  ")


def test_compacted_coalitions_equal_full_masking(dinov2):
    """Dropping absent tokens from each forward gives the same values as masking them in place."""
    import dataclasses

    from tomviz.api import run
    from tomviz.merge.engine import Resume

    res = tomviz.inspect(dinov2, _image(), r=[3, 3, 0, 0], keep_hidden=True)
    game = model_game(res, 1)
    masks = np.random.default_rng(4).random((150, len(game.groups))) < 0.5  # > SUB_BATCH: several forwards
    hidden, sizes = res.state.hidden[1]
    present = torch.ones(150, hidden.shape[1], dtype=torch.bool)
    present[:, torch.as_tensor(game.groups)] = torch.as_tensor(masks)
    config = dataclasses.replace(res.config, trace=False, keep_hidden=False, resume=Resume(1, hidden, sizes, present))
    outputs, state = run(res.model, res.inputs, config)
    np.testing.assert_allclose(game(masks), game.read(outputs, state).double().numpy(), atol=1e-5)


def test_banzhaf_without_keep_hidden_reruns_the_forward():
    import tomviz

    model = tiny.vit(classifier=3, num_hidden_layers=3)
    res = tomviz.inspect(model, torch.randn(1, 3, 32, 32), r=4)
    assert not res.state.hidden
    scores = res.banzhaf(layer=0, exact=True)
    assert scores.values.shape == (len(scores.groups),) and len(scores.groups) == 17 - 4 - 1
