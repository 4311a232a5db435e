"""MustDrop on a tiny LLaVA (CLIP tower with CLS, Llama LLM), against references built here from the definitions
(liuting20/MustDrop @909afa5: ``clip_encoder.py`` ``CLIPVisionModelAcc.custom_forward``,
``modelling_sparse_llama.py`` ``LlamaDynamicvitModel.forward``): the vision tower run block by block with the
windows merged after block 0, the CLS attention of the last block read from eager attention weights, the LLM
run layer by layer with eager attention, the filter applied after the pruning layers with positions renumbered,
and decoding recomputed from scratch at every step with each layer's evicted cache and its own positions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import tiny
from tomviz import vlm
from tomviz.merge import mustdrop as rules
from tomviz.merge.registry import names

QUESTION = "what is in this image ?"
# 9 x 9 patches: 9 windows, 2 of them reach 0.5 on this photo; the thresholds drop 7 tokens after layer 1
OPTIONS = {"window_threshold": 0.5, "layers": (1, 2, 4), "global_thr": 0.015, "individual_thr": 0.1}


@pytest.fixture(scope="module")
def loaded():
    from tomviz.models.vlm import wrap

    torch.manual_seed(0)
    model, processor = tiny.llava(image_size=72, patch=8, vision_layers=2, text_layers=6, tower="clip")
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight *= 8  # peaked attention: the filter drops some tokens and keeps others
    return wrap("llava", model, processor)


@pytest.fixture(scope="module")
def inputs(loaded):
    return vlm.prepare(loaded, tiny.photo(), QUESTION)


def _reduction(**options):
    return vlm.Reduction(place="llm", method="mustdrop", ratio=0.5, method_options={**OPTIONS, **options})


@pytest.fixture(scope="module")
def result(loaded):
    return vlm.inspect_vlm(loaded, tiny.photo(), QUESTION, place="llm", method="mustdrop", ratio=0.5,
                           max_new_tokens=4, method_options=OPTIONS)


def _check_partition(layer, num_in):
    source = layer.source
    assert source.shape == (num_in,)
    assert source.min() >= -1 and source.max() < layer.num_tokens
    counts = np.bincount(source[source >= 0], minlength=layer.num_tokens)
    assert (counts > 0).all()  # every output token has members
    np.testing.assert_array_equal(counts, layer.sizes)


def test_registered_at_the_llm():
    assert "mustdrop" in names("llm")
    from tomviz.ui.vlm_tab import method_choices

    assert "mustdrop" in [name for _, name in method_choices("llm")]


def test_each_stage_is_a_valid_partition(result):
    stages = result.stages
    for name in ("encoder", "key_set", "boundary", "llm", "cache"):
        trace = stages[name]
        for index, layer in enumerate(trace.layers):
            _check_partition(layer, trace.num_input_tokens)
            if index:  # nested: a token dropped stays dropped
                assert not ((trace.layers[index - 1].source < 0) & (layer.source >= 0)).any()
    merged = stages["encoder"].layers[0]
    assert stages["encoder"].num_input_tokens == 81 and merged.num_tokens == 81 - 2 * 8
    assert sorted(merged.sizes[:2]) == [9, 9]  # the two merged windows come first, then the rest
    np.testing.assert_array_equal(stages["boundary"].layers[0].source, merged.source)
    assert stages["key_set"].num_input_tokens == merged.num_tokens == stages["llm"].num_input_tokens
    assert [layer.num_tokens for layer in stages["llm"].layers] == [58, 58, 58]
    key = stages["key_set"].meta["key_set"]
    assert len(key) == int(np.ceil(0.08 * merged.num_tokens))
    assert (stages["llm"].layers[-1].source[key] >= 0).all()  # the key set always stays
    cache = [layer.num_tokens for layer in stages["cache"].layers]
    assert cache == [65, 58, 58, 58, 58, 58]


def test_tokens_entering_each_layer_equal_the_trace(loaded, inputs):
    prefill = vlm.build_prefill(loaded, inputs, _reduction())
    lengths = []
    hooks = [layer.self_attn.register_forward_pre_hook(lambda m, a, k: lengths.append(k["hidden_states"].shape[1]),
                                                       with_kwargs=True) for layer in loaded.language_model.layers]
    try:
        generation = vlm.generate(loaded, prefill, max_new_tokens=1)
    finally:
        for hook in hooks:
            hook.remove()
    text = int((~prefill.visual).sum())
    entering = [length - text for length in lengths[:6]]  # the prefill's six layers
    assert entering == generation.llm_visual_tokens == [65, 65, 58, 58, 58, 58]


def test_stages_one_and_two_equal_the_definition(loaded, inputs):
    prefill = vlm.build_prefill(loaded, inputs, _reduction())
    tower = loaded.model.model.vision_tower
    blocks = tower.encoder.layers
    with torch.no_grad():
        hidden = tower(inputs.tensors["pixel_values"], output_hidden_states=True).hidden_states[1]  # after block 0
        patches = hidden[:, 1:]  # [1, 81, C]
        windows = rules.window_tokens(9, 9)
        score = rules.window_similarity(patches, windows)[0]  # [9]
        chosen = [int(w) for w in score.argsort(descending=True) if score[w] >= 0.5]
        in_window = set(windows[chosen].flatten().tolist())
        rest = [patches[0, i] for i in range(81) if i not in in_window]
        merged = [patches[0, windows[w]].mean(0) for w in chosen]
        hidden = torch.stack([hidden[0, 0], *merged, *rest])[None]  # CLS, windows best first, the rest
        for block in blocks[1:]:
            hidden = block(hidden, None)
        features = loaded.model.model.multi_modal_projector(hidden[:, 1:])  # [1, 65, D]
    torch.testing.assert_close(prefill.embeds[0, prefill.visual], features[0], atol=1e-5, rtol=1e-4)


def test_key_set_from_eager_cls_attention(loaded, inputs):
    prefill = vlm.build_prefill(loaded, inputs, _reduction())
    tower = loaded.model.model.vision_tower
    last = tower.encoder.layers[-1]
    seen = {}

    def keep_input(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]

    hook = last.register_forward_pre_hook(keep_input, with_kwargs=True)
    from tomviz.models.mustdrop import VisionRun

    try:
        with torch.no_grad(), VisionRun(threshold=0.5):  # the merged tokens enter the last block
            loaded.adapter.image_features(loaded.model, inputs.tensors)
    finally:
        hook.remove()
    attn = last.self_attn
    attn.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            _, weights = attn(hidden_states=last.layer_norm1(seen["x"]), attention_mask=None)  # [1, H, N, N]
    finally:
        attn.config._attn_implementation = "sdpa"
    cls = weights[0, :, 0, 1:].mean(0)  # [N']
    expected = cls.topk(int(np.ceil(0.08 * cls.shape[0]))).indices
    torch.testing.assert_close(prefill.mustdrop.key.sort().values, expected.sort().values)


def _eager_layer(layer, hidden, positions, rotary):
    """One decoder layer with eager attention, causal, at RoPE ``positions`` ``[n]``: (output, weights ``[1, H, n, n]``)."""
    seen = []
    hook = layer.self_attn.register_forward_hook(lambda m, a, out: seen.append(out[1]))
    try:
        n = hidden.shape[1]
        mask = torch.zeros(1, 1, n, n).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), torch.finfo(torch.float32).min)
        out = layer(hidden, attention_mask=mask, position_ids=positions[None],
                    position_embeddings=rotary(hidden, positions[None]))
    finally:
        hook.remove()
    return out, seen[0]


def _reference_prefill(loaded, prefill, options):
    """Per layer (its input ``[1, n, C]``, the prefill positions it holds), and the last position's logits."""
    lm = loaded.language_model
    hidden, held = prefill.embeds, torch.arange(prefill.embeds.shape[1])
    start = int(prefill.visual.nonzero()[0, 0])
    key = prefill.mustdrop.key
    inputs = []
    for index, layer in enumerate(lm.layers):
        inputs.append((hidden, held))
        hidden, weights = _eager_layer(layer, hidden, torch.arange(held.shape[0]), lm.rotary_emb)  # renumbered
        if index in options["layers"]:
            num_visual = int(prefill.visual[held].sum())
            text = weights[0].mean(0)[start + num_visual:, start:start + num_visual]  # [T, V]
            kept, key = rules.dual_attention_filter(text, key, options["global_thr"], options["individual_thr"])
            stay = rules.stage_positions(kept, start, num_visual, held.shape[0])
            hidden, held = hidden[:, stay], held[stay]
    return inputs, loaded.model.lm_head(lm.norm(hidden))[0, -1]


def _reference_step(loaded, inputs, final, generated, options):
    """The logits after ``generated`` ``[t]`` tokens, recomputed from scratch: in layer ``l`` the new tokens attend to
    the prefill tokens its cache keeps (all before the first pruning layer; from it on the last stage's survivors)
    at the positions they had in that layer, and sit at the positions that follow the cache's length."""
    lm = loaded.language_model
    new = lm.embed_tokens(torch.tensor([generated]))  # [1, t, C]
    for index, layer in enumerate(lm.layers):
        hidden, held = inputs[index]
        cached = torch.arange(held.shape[0]) if index < options["layers"][0] else torch.searchsorted(held, final)
        positions = torch.cat([cached, cached.shape[0] + torch.arange(len(generated))])
        out, _ = _eager_layer(layer, torch.cat([hidden[:, cached], new], dim=1), positions, lm.rotary_emb)
        new = out[:, cached.shape[0]:]
    return loaded.model.lm_head(lm.norm(new))[0, -1]


def test_prefill_and_cached_decoding_equal_the_layer_by_layer_reference(loaded, inputs):
    prefill = vlm.build_prefill(loaded, inputs, _reduction())
    lm = loaded.language_model
    steps, tokens = [], []
    with torch.inference_mode(), prefill.llm_state() as state:
        out = loaded.model(inputs_embeds=prefill.embeds, use_cache=True, logits_to_keep=1)
        steps.append(out.logits[0, -1].float())
        for _ in range(3):
            tokens.append(int(steps[-1].argmax()))
            out = loaded.model(input_ids=torch.tensor([[tokens[-1]]]), cache=out.cache, use_cache=True, logits_to_keep=1)
            steps.append(out.logits[0, -1].float())
    cache_lengths = [out.cache.get_seq_length(index) for index in range(len(lm.layers))]
    final = state.mustdrop.kept[-1]
    length = prefill.embeds.shape[1]
    assert cache_lengths == [length + 3] + [final.shape[0] + 3] * 5  # layers before the first pruning layer (1) keep all
    lm.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            layer_inputs, first = _reference_prefill(loaded, prefill, OPTIONS)
            assert [held.shape[0] for _, held in layer_inputs] == [length, length] + [final.shape[0]] * 4
            torch.testing.assert_close(steps[0], first, atol=1e-4, rtol=1e-4)
            for t in range(1, 4):
                torch.testing.assert_close(steps[t], _reference_step(loaded, layer_inputs, final, tokens[:t], OPTIONS),
                                           atol=1e-4, rtol=1e-4)
    finally:
        lm.config._attn_implementation = "sdpa"
    assert vlm.generate(loaded, prefill, max_new_tokens=4).tokens[:3] == tokens


def test_teacher_forcing_filters_on_the_prompt_rows(loaded, inputs):
    prefill = vlm.build_prefill(loaded, inputs, _reduction())
    generation = vlm.generate(loaded, prefill, max_new_tokens=3)
    forced = vlm.teacher_forced(loaded, prefill, generation.tokens)
    torch.testing.assert_close(forced.first_logits, generation.first_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case, match", [
    ({"model": "smolvlm"}, "no CLS token that its projector drops"),
    ({"model": "qwen2_vl"}, "no CLS token that its projector drops"),
    ({"model": "onevision"}, "no CLS token that its projector drops"),
    ({"options": {"layers": (2, 6, 10, 14)}}, "has 6 layers"),
    ({"options": {"windows": 3}}, "takes the options"),
])
def test_unsupported_places_and_models_say_why(loaded, inputs, case, match):
    if "model" in case:
        from tomviz.models.vlm import wrap

        model, processor = getattr(tiny, case["model"])(text_layers=6)
        other = wrap(case["model"], model, processor)
        with pytest.raises(ValueError, match=match):
            vlm.build_prefill(other, vlm.prepare(other, tiny.photo(), QUESTION), _reduction(layers=(1, 2)))
        return
    options = {**OPTIONS, **case["options"]}
    with pytest.raises(ValueError, match=match):
        vlm.build_prefill(loaded, inputs, vlm.Reduction(place="llm", method="mustdrop", ratio=0.5, method_options=options))


def test_boundary_and_encoder_refuse_mustdrop():
    for place in ("boundary", "encoder"):
        with pytest.raises(ValueError, match="inside the LLM"):
            vlm.Reduction(place=place, method="mustdrop", ratio=0.5).check()


def test_answer_attention_and_banzhaf_on_the_tokens_the_llm_receives(result):
    assert result.answer_attention.shape[2] == result.token_counts["llm_input"] == 65
    assert np.isfinite(result.answer_attention).all()
    estimate = result.banzhaf(samples=4)  # the game masks visual tokens; MustDrop's filter is not applied there
    assert estimate.values.shape == (65,)
