"""DyMU's virtual token unmerging (VTU) in the LLM of tiny random SmolVLM / LLaVA models."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests import tiny
from tests.vlm.test_vlm import QUESTION, inputs, loaded  # noqa: F401  (the same tiny models, as fixtures)
from tomviz import vlm

# merge exactly the duplicated tokens: DToMe with a threshold only identical features pass
DUPLICATES = vlm.Reduction("boundary", "dtome", 0.5, vtu=True, method_options={"threshold": 1 - 1e-5})


def _logits(loaded, prefill) -> torch.Tensor:
    """``[L', vocab]``: one forward over the prefill under its own state (no cache)."""
    with torch.inference_mode(), prefill.llm_state():
        return loaded.model(inputs_embeds=prefill.embeds, use_cache=False).logits[0].float()


def _duplicated(loaded, inputs, red):
    """The prefill of ``red`` on visual features where token 2i+1 is a copy of token 2i."""
    encoded = vlm.encode(loaded, inputs, red)
    features = encoded.features.clone()  # [1, V, D]
    pairs = features.shape[1] // 2
    features[:, 1:2 * pairs:2] = features[:, 0:2 * pairs:2]
    return vlm.to_prefill(loaded, inputs, replace(encoded, features=features), red)


def test_vtu_without_merging_equals_unreduced(loaded, inputs):
    base = vlm.build_prefill(loaded, inputs, vlm.Reduction())
    virtual = vlm.build_prefill(loaded, inputs, vlm.Reduction("boundary", "tome", 0.0, vtu=True))
    assert virtual.vtu is not None and torch.equal(virtual.vtu.index, torch.arange(base.embeds.shape[1]))
    assert (_logits(loaded, virtual) - _logits(loaded, base)).abs().max() < 1e-4


def test_vtu_on_duplicates_is_close_to_unreduced_plain_merging_is_not(loaded, inputs):
    full = _duplicated(loaded, inputs, vlm.Reduction())
    virtual = _duplicated(loaded, inputs, DUPLICATES)
    plain = _duplicated(loaded, inputs, replace(DUPLICATES, vtu=False))
    num_visual = int(full.visual.sum())
    assert int(virtual.visual.sum()) == num_visual - num_visual // 2  # every copy merged with its original
    assert int(plain.visual.sum()) == int(virtual.visual.sum())
    assert virtual.vtu.index.shape[0] == full.embeds.shape[1]
    reference = _logits(loaded, full)[-1]
    vtu_error = (_logits(loaded, virtual)[-1] - reference).abs().max()
    plain_error = (_logits(loaded, plain)[-1] - reference).abs().max()
    # not exact: after the first layer a merged token carries the mean of its members' states
    assert vtu_error < 0.25 * plain_error, (float(vtu_error), float(plain_error))


def test_vtu_first_layer_exact_on_duplicates(loaded, inputs):
    """With one LLM layer, VTU on exact duplicates equals the unreduced model wherever a token is text."""
    layers = loaded.language_model.layers
    saved = list(layers)
    del layers[1:]
    try:
        full = _duplicated(loaded, inputs, vlm.Reduction())
        virtual = _duplicated(loaded, inputs, DUPLICATES)
        assert (_logits(loaded, virtual)[-1] - _logits(loaded, full)[-1]).abs().max() < 1e-4
    finally:
        layers.extend(saved[1:])


def test_vtu_kv_cache_generation_equals_recomputation(loaded, inputs):
    red = vlm.Reduction("boundary", "tome", 0.5, vtu=True)
    prefill = vlm.build_prefill(loaded, inputs, red)
    generated = vlm.generate(loaded, prefill, max_new_tokens=6)
    embed = loaded.language_model.get_input_embeddings()
    recomputed = []
    for step in range(len(generated.tokens)):
        answer = torch.tensor([generated.tokens[:step]], dtype=torch.long)
        with torch.inference_mode():
            embeds = torch.cat([prefill.embeds, embed(answer)], dim=1)
            visual = torch.cat([prefill.visual, torch.zeros(step, dtype=torch.bool)])
            with prefill.llm_state(visual=visual):
                logits = loaded.model(inputs_embeds=embeds, use_cache=False).logits[0, -1]
        recomputed.append(int(logits.argmax()))
    assert generated.tokens == recomputed
    forced = vlm.teacher_forced(loaded, prefill, generated.tokens, record_attention=True)
    assert (forced.first_logits - generated.first_logits).abs().max() < 1e-4
    attention = torch.stack(forced.attention)  # [layers, A, L'] onto the merged keys
    assert attention.shape[1:] == (len(generated.tokens), prefill.embeds.shape[1] + len(generated.tokens))
    assert torch.allclose(attention.sum(-1), torch.ones(attention.shape[:2]), atol=1e-4)


def test_vtu_refuses_pruning_and_the_llm_place(loaded, inputs):
    with pytest.raises(ValueError, match="only merges"):
        vlm.build_prefill(loaded, inputs, vlm.Reduction("boundary", "random_prune", 0.5, vtu=True))
    with pytest.raises(ValueError, match="boundary or the encoder"):
        vlm.Reduction("llm", "fastv", 0.5, vtu=True).check()


def test_inspect_with_vtu(loaded):
    res = vlm.inspect_vlm(loaded, tiny.photo(), QUESTION, place="boundary", method="tome", ratio=0.5,
                          max_new_tokens=4, vtu=True)
    assert res.token_counts["llm_input"] < res.token_counts["visual"]
    assert res.answer_attention is not None and res.answer_attention.shape[-1] == res.token_counts["llm_input"]
    assert res.banzhaf(samples=4).values.shape == (res.token_counts["llm_input"],)


def test_vtu_after_encoder_merging(loaded):
    """DyMU's own setting: merging inside the encoder (LLaVA: the LLM receives the merged tokens), VTU in the LLM."""
    res = vlm.inspect_vlm(loaded, tiny.photo(), QUESTION, place="encoder", method="tome", ratio=0.5,
                          max_new_tokens=3, vtu=True)
    prefill = res._prefill
    assert prefill.vtu is not None and prefill.key_bias is None
    assert prefill.vtu.index.shape[0] == res.inputs.tensors["input_ids"].shape[1]  # one virtual token per original one
    if loaded.adapter.unmerge:  # SmolVLM: unmerged before the connector, nothing merged reaches the LLM
        assert res.token_counts["llm_input"] == res.token_counts["visual"]
    else:
        assert res.token_counts["llm_input"] < res.token_counts["visual"]
