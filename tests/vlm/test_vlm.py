"""Token reduction inside tiny random VLMs (SmolVLM, LLaVA with SigLIP/Qwen2 and CLIP/Llama)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests import tiny
from tomviz import vlm
from tomviz.models import llm
from tomviz.models.vlm import wrap

QUESTION = "what is in this image ?"
REDUCTIONS = [
    vlm.Reduction("encoder", "tome", 0.5),
    vlm.Reduction("boundary", "tome", 0.5),
    vlm.Reduction("boundary", "random_prune", 0.5),
    vlm.Reduction("boundary", "downsample", 0.75),
    vlm.Reduction("llm", "fastv", 0.5, fastv_layer=1),
    vlm.Reduction("boundary", "visionzip_paper", 0.5),
    vlm.Reduction("boundary", "hiprune", 0.5),
    vlm.Reduction("boundary", "aim", 0.5),
    vlm.Reduction("boundary", "dtome", 0.5, method_options={"threshold": -1.0}),  # every proposal passes: down to the floor
]


@pytest.fixture(scope="module", params=["smolvlm", "llava-siglip", "llava-clip"])
def loaded(request):
    torch.manual_seed(0)
    if request.param == "smolvlm":
        model, processor = tiny.smolvlm()
    else:
        model, processor = tiny.llava(tower=request.param.split("-")[1])
    return wrap(request.param, model, processor)


@pytest.fixture(scope="module")
def inputs(loaded):
    return vlm.prepare(loaded, tiny.photo(), QUESTION)


def test_no_reduction_matches_unpatched(loaded, inputs):
    with torch.inference_mode():
        reference = loaded.model(**inputs.tensors).logits[0]  # patched, no state: the original forwards
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction())
    with torch.inference_mode(), llm.LLMState(visual=prefill.visual):
        ours = loaded.model(inputs_embeds=prefill.embeds).logits[0]
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() < 1e-4
    generated = vlm.generate(loaded, prefill, max_new_tokens=5)
    assert (generated.first_logits - reference[-1]).abs().max() < 1e-4


def test_greedy_kv_cache_matches_generate(loaded, inputs):
    expected = loaded.model.generate(**inputs.tensors, max_new_tokens=5, do_sample=False)
    ours = vlm.generate(loaded, vlm.build_prefill(loaded, inputs, vlm.Reduction()), max_new_tokens=5)
    assert ours.tokens[:5] == expected[0, inputs.tensors["input_ids"].shape[1]:].tolist()[: len(ours.tokens)]


def _check_partition(trace):
    for layer in trace.layers:
        source, sizes = layer.source, layer.sizes
        assert source.shape == (trace.num_input_tokens,)
        assert source.min() >= -1 and source.max() < layer.num_tokens
        counts = np.bincount(source[source >= 0], minlength=layer.num_tokens)
        assert (counts > 0).all()  # every output token stands for some input token
        np.testing.assert_array_equal(counts, sizes)


@pytest.mark.parametrize("reduction", REDUCTIONS, ids=lambda r: f"{r.place}-{r.method}")
def test_reduction_cached_decoding_and_counts(loaded, inputs, reduction):
    """Each stage is a valid partition; the LLM gets the token count the trace says; greedy decoding
    with the KV cache equals recomputing the whole sequence under the same reduction."""
    prefill = vlm.build_prefill(loaded, inputs, reduction)
    for trace in prefill.stages.values():
        _check_partition(trace)
    boundary = prefill.stages["boundary"]
    lengths = []
    layers = loaded.language_model.layers
    hooks = [layer.register_forward_hook(lambda m, a, out: lengths.append(out.shape[1])) for layer in layers]  # tokens out
    try:
        generated = vlm.generate(loaded, prefill, max_new_tokens=6)
    finally:
        for hook in hooks:
            hook.remove()
    prefill_lengths = lengths[: len(layers)]
    text = int((~prefill.visual).sum())
    assert int(prefill.visual.sum()) == boundary.layers[-1].num_tokens
    assert prefill_lengths[0] == text + boundary.layers[-1].num_tokens
    if reduction.place == "llm":
        k = reduction.fastv_layer
        kept = boundary.layers[-1].num_tokens - round(reduction.ratio * boundary.num_input_tokens)
        assert prefill_lengths[k:] == [text + kept] * (len(layers) - k)
        assert generated.llm_visual_tokens[-1] == kept
    else:
        assert len(set(prefill_lengths)) == 1
    if reduction.place == "boundary" and reduction.method != "downsample":
        assert boundary.layers[-1].num_tokens == boundary.num_input_tokens - round(reduction.ratio * boundary.num_input_tokens)
    forced = vlm.teacher_forced(loaded, prefill, generated.tokens)
    answer = torch.tensor(generated.tokens)
    ids = torch.cat([torch.zeros(prefill.embeds.shape[1], dtype=torch.long), answer])
    with torch.inference_mode():
        embeds = torch.cat([prefill.embeds, loaded.language_model.get_input_embeddings()(answer[None])], 1)
        fastv = None if prefill.fastv is None else replace(prefill.fastv, query=prefill.embeds.shape[1] - 1)
        pad = torch.zeros(len(answer), dtype=torch.bool)
        bias = None if prefill.key_bias is None else torch.cat([prefill.key_bias, pad.float()])
        with llm.LLMState(visual=torch.cat([prefill.visual, pad]), key_bias=bias, fastv=fastv):
            logits = loaded.model(inputs_embeds=embeds).logits[0]
    assert logits[-(len(answer) + 1):-1].argmax(-1).tolist() == generated.tokens
    assert (forced.first_logits - generated.first_logits).abs().max() < 1e-4
    assert len(ids) == embeds.shape[1]


def test_sdpa_stays_the_kernel(loaded, inputs, monkeypatch):
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("attn_mask") is not None)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    assert loaded.language_model.config._attn_implementation == "sdpa"
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction("boundary", "tome", 0.5))
    vlm.generate(loaded, prefill, max_new_tokens=2)
    vision_layers = loaded.vision.config.num_hidden_layers
    llm_layers = len(loaded.language_model.layers)
    assert len(calls) == vision_layers + llm_layers * 2
    assert all(calls[vision_layers:])  # the log-size bias reached the LLM through SDPA's mask


def test_inspect_result(loaded):
    import tomviz

    res = tomviz.inspect(loaded, (tiny.photo(), QUESTION), ratio=0.5, method="fastv", place="llm", fastv_layer=1, max_new_tokens=4)
    assert res.reference_answer.split() == res.answer_tokens and len(res.answer_tokens) <= 4  # the tiny vocabulary's words
    assert res.answer and res.fidelity.exact_match == (res.answer == res.reference_answer)
    assert res.trace.meta["stage"] == "llm"
    assert 0 < res.fidelity.first_token_kl < 0.01  # pruning half the image after layer 1 moves the first token a little
    assert res.answer_attention.shape[:2] == (len(loaded.language_model.layers), len(res.answer_tokens))
    np.testing.assert_allclose(res.answer_attention.sum(-1) <= 1 + 1e-5, True)
    spread = res.attention_on_image(0, 0)
    assert spread.shape == (res.stages["boundary"].num_input_tokens,)
    same = tomviz.inspect(loaded, (tiny.photo(), QUESTION), ratio=0.0, place="boundary", max_new_tokens=4)
    assert same.fidelity.exact_match and same.answer == same.reference_answer
    assert abs(same.fidelity.log_likelihood - same.fidelity.reference_log_likelihood) < 1e-4


def test_encoder_attention_matches_eager():
    """The attention received per visual token (visionzip_paper, HiPrune) equals eager attention weights, pooled."""
    model, processor = tiny.smolvlm(vision_layers=3)
    loaded = wrap("smolvlm", model, processor)
    inputs = vlm.prepare(loaded, tiny.photo(), QUESTION)
    encoded = vlm.encode(loaded, inputs, vlm.Reduction("boundary", "visionzip_paper", 0.5))
    vision = model.model.vision_model
    vision.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            weights = vision(inputs.tensors["pixel_values"][0], output_attentions=True).attentions
    finally:
        vision.config._attn_implementation = "sdpa"
    for name, layer in (("deep", 1), ("middle", 1)):
        received = weights[layer][0].mean(0).mean(0).view(1, 1, 8, 8)  # [N] mean over heads and queries
        expected = torch.nn.functional.adaptive_avg_pool2d(received, (4, 4)).reshape(1, -1)
        assert (encoded.attention[name] - expected).abs().max() < 1e-5


def test_banzhaf_of_visual_groups():
    """Players = the visual groups the LLM receives; v(all) is the reduced model's log-likelihood."""
    model, processor = tiny.smolvlm()
    loaded = wrap("smolvlm", model, processor)
    res = vlm.inspect_vlm(loaded, tiny.photo(), QUESTION, place="boundary", method="tome", ratio=0.75, max_new_tokens=3)
    game = res.banzhaf(exact=True)
    assert game.values.shape == (res.token_counts["llm_input"],) and np.isfinite(game.values).all()
    assert abs(game.full_value - res.fidelity.log_likelihood) < 1e-3
    assert res.stages["boundary"].spread(game.values, -1).shape == (res.token_counts["visual"],)


@pytest.mark.parametrize("place, method, runs", [("llm", "fastv", 1), ("llm", "aim", 1), ("boundary", "tome", 2)])
def test_vision_tower_runs_once_when_the_encoder_reduces_nothing(loaded, place, method, runs):
    """Inside the LLM (FastV, AIM) the reduced run reads the unreduced encoder's output: one tower pass for both runs."""
    calls = []
    handle = loaded.adapter.vision_tower(loaded.model).register_forward_hook(lambda *args: calls.append(1))
    try:
        res = vlm.inspect_vlm(loaded, tiny.photo(), QUESTION, place=place, method=method, ratio=0.5, max_new_tokens=2)
    finally:
        handle.remove()
    assert len(calls) == runs
    assert res.stages["boundary"].meta["place"] == place
    assert res._prefill.encoder_seconds > 0


def test_fastv_layer_computes_its_keys_once_while_recording(loaded, inputs):
    """Teacher forcing with recording under FastV: layer K-1 ranks and records from one set of keys (the layer's
    own attention is the other k_proj call), and the ranking equals FastV's own without recording."""
    red = vlm.Reduction("llm", "fastv", 0.5, fastv_layer=2)
    prefill = vlm.build_prefill(loaded, inputs, red)
    answer = [int(t) for t in inputs.tensors["input_ids"][0, -3:]]
    k_proj = loaded.language_model.layers[red.fastv_layer - 1].self_attn.k_proj
    calls = []
    handle = k_proj.register_forward_hook(lambda *args: calls.append(1))
    try:
        recorded = vlm.teacher_forced(loaded, prefill, answer, record_attention=True)
    finally:
        handle.remove()
    assert len(calls) == 2
    plain = vlm.teacher_forced(loaded, prefill, answer)
    assert torch.equal(recorded.keep, plain.keep)
    torch.testing.assert_close(recorded.log_probs, plain.log_probs)
    assert len(recorded.attention) == len(loaded.language_model.layers)
