"""AIM inside the LLM of a tiny SmolVLM (PageRank pruning by masking, LaVi-Lab/AIM @edc24e9 ``get_importance`` and
``Qwen2Model.forward``), against a layer-by-layer reference run here with eager attention: each layer's PageRank from
its attention probabilities (``softmax(logits / 0.1)`` is ``p ** 10`` renormalised), the pruned keys masked out of every
later layer."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests import tiny
from tomviz import vlm
from tomviz.merge.aim import keep_mask, retain_rates

QUESTION = "what is in this image ?"
OPTIONS = {"start": 1, "step": 0.25}  # 4 layers: keep 1, 0.75, 0.5, 0.25 of the visual tokens after each


@pytest.fixture(scope="module")
def loaded():
    from tomviz.models.vlm import wrap

    torch.manual_seed(0)
    model, processor = tiny.smolvlm(text_layers=4)
    with torch.no_grad():
        for layer in model.model.text_model.layers:
            layer.self_attn.q_proj.weight *= 30  # peaked attention: the temperature and the masks change the ranking
    return wrap("smolvlm", model, processor)


@pytest.fixture(scope="module")
def inputs(loaded):
    return vlm.prepare(loaded, tiny.photo(), QUESTION)


def _pagerank(probs: torch.Tensor) -> torch.Tensor:
    """``[1, H, L, L]`` attention probabilities → ``[1, L]``: 5 PageRank steps on ``softmax(logits / 0.1)``, RMS over heads."""
    sharp = probs.double() ** 10
    transition = sharp / sharp.sum(-1, keepdim=True)
    dist = torch.full_like(transition[:, :, :1], 1.0 / probs.shape[-1])
    for _ in range(5):
        dist = dist @ transition
    return dist.pow(2).mean(1).sqrt()[:, 0].float()


def _reference(loaded, prefill, rates, drop=False):
    """(per layer the keys left after it, the last position's logits), layer by layer with eager attention; the
    pruned tokens masked out of the keys, or with ``drop`` removed (hidden states and rotary positions sliced)."""
    lm = loaded.language_model
    hidden = prefill.embeds
    length = hidden.shape[1]
    positions = torch.arange(length)[None]
    rotary = lm.rotary_emb(hidden, positions)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    active, history, probs = torch.ones(length, dtype=torch.bool), [], []
    hooks = [layer.self_attn.register_forward_hook(lambda m, a, out: probs.append(out[1])) for layer in lm.layers]
    lm.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            held = torch.arange(length)  # the positions the hidden states hold
            for index, layer in enumerate(lm.layers):
                if drop:
                    hidden = hidden[:, torch.searchsorted(held, active.nonzero()[:, 0])]
                    held = active.nonzero()[:, 0]
                    allowed = causal[held][:, held]
                else:
                    allowed = causal & active[None, :]
                mask = torch.zeros(1, 1, *allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
                rotary_held = tuple(part[:, held] for part in rotary)
                hidden = layer(hidden, attention_mask=mask, position_ids=held[None], position_embeddings=rotary_held)
                if rates[index] < 1:
                    scores = torch.full((length,), -1.0).index_copy_(0, held, _pagerank(probs[-1])[0])
                    active = keep_mask(scores[None], active[None], ~prefill.visual[None], rates[index])[0]
                history.append(active.clone())
            logits = loaded.model.lm_head(lm.norm(hidden))[0, -1]
    finally:
        lm.config._attn_implementation = "sdpa"
        for hook in hooks:
            hook.remove()
    return history, logits


def test_masks_and_logits_equal_the_reference(loaded, inputs):
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction("llm", "aim", 0.5, method_options=OPTIONS))
    assert prefill.aim.rates == retain_rates(4, 1, 0.25) == [1.0, 0.75, 0.5, 0.25]
    generated = vlm.generate(loaded, prefill, max_new_tokens=4)
    history, logits = _reference(loaded, prefill, prefill.aim.rates)
    visual = int(prefill.visual.sum())
    for ours, theirs, rate in zip(generated.active, history, prefill.aim.rates):
        assert torch.equal(ours, theirs)
        assert int((ours & prefill.visual).sum()) == int(visual * rate)  # of the original count, text kept
        assert bool(ours[~prefill.visual].all())
    assert generated.llm_visual_tokens == [visual] + [int(visual * r) for r in prefill.aim.rates[:-1]]
    assert (generated.first_logits - logits).abs().max() < 1e-4


def test_dropping_equals_the_reference_and_shortens_the_layers(loaded, inputs):
    red = vlm.Reduction("llm", "aim", 0.5, method_options={**OPTIONS, "drop": True})
    prefill = vlm.build_prefill(loaded, inputs, red)
    lengths = []
    hooks = [layer.register_forward_hook(lambda m, a, out: lengths.append(out.shape[1])) for layer in loaded.language_model.layers]
    try:
        generated = vlm.generate(loaded, prefill, max_new_tokens=5)
    finally:
        for hook in hooks:
            hook.remove()
    history, logits = _reference(loaded, prefill, prefill.aim.rates, drop=True)
    for ours, theirs in zip(generated.active, history):
        assert torch.equal(ours, theirs)
    assert (generated.first_logits - logits).abs().max() < 1e-4
    visual, text = int(prefill.visual.sum()), int((~prefill.visual).sum())
    assert lengths[:4] == [text + visual] + [text + int(visual * r) for r in prefill.aim.rates[:-1]]
    forced = vlm.teacher_forced(loaded, prefill, generated.tokens)  # the cache holds only the kept tokens
    assert (forced.first_logits - generated.first_logits).abs().max() < 1e-4
    answer = torch.tensor(generated.tokens)
    with torch.inference_mode(), prefill.llm_state(visual=torch.cat([prefill.visual, torch.zeros(len(answer), dtype=torch.bool)]),
                                                   aim=replace(prefill.aim, length=prefill.embeds.shape[1])):
        embeds = torch.cat([prefill.embeds, loaded.language_model.get_input_embeddings()(answer[None])], 1)
        recomputed = loaded.model(inputs_embeds=embeds).logits[0, -(len(answer) + 1):-1]
    assert recomputed.argmax(-1).tolist() == generated.tokens


def test_cached_decoding_equals_recomputation_and_trace(loaded, inputs):
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction("llm", "aim", 0.5, method_options=OPTIONS))
    generated = vlm.generate(loaded, prefill, max_new_tokens=5)
    forced = vlm.teacher_forced(loaded, prefill, generated.tokens)  # one pass, no cache, ranked on the prompt
    assert (forced.first_logits - generated.first_logits).abs().max() < 1e-4
    res = vlm.inspect_vlm(loaded, tiny.photo(), QUESTION, place="llm", method="aim", ratio=0.5, max_new_tokens=3,
                          method_options=OPTIONS)
    trace = res.stages["llm"]
    assert trace.num_layers == 4 and trace.meta["pruning"] == "mask"
    visual = res.token_counts["llm_input"]
    for layer, rate in zip(trace.layers, prefill.aim.rates):
        kept = layer.source >= 0
        assert kept.sum() == int(visual * rate) == layer.num_tokens
        np.testing.assert_array_equal(np.bincount(layer.source[kept], minlength=layer.num_tokens), layer.sizes)
    assert res.token_counts["llm_after_k"] == int(visual * 0.5)  # entering the last layer


def test_sdpa_stays_the_kernel(loaded, inputs, monkeypatch):
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction("llm", "aim", 0.5, method_options=OPTIONS))
    vlm.generate(loaded, prefill, max_new_tokens=1)
    assert len(calls) == loaded.vision.config.num_hidden_layers + len(loaded.language_model.layers)


@pytest.mark.parametrize("red,message", [
    (vlm.Reduction("llm", "aim", 0.5, method_options={"layer": 2}), "options start, step and drop"),
    (vlm.Reduction("llm", "aim", 0.5, method_options={"start": 9}), "first pruning layer"),
])
def test_bad_options(loaded, inputs, red, message):
    with pytest.raises(ValueError, match=message):
        vlm.build_prefill(loaded, inputs, red)


def test_aim_is_not_an_encoder_method(loaded, inputs):
    with pytest.raises(ValueError, match="aim works at the boundary or inside the LLM"):
        vlm.build_prefill(loaded, inputs, vlm.Reduction("encoder", "aim", 0.5))
