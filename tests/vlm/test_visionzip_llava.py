"""VisionZip at the boundary of a tiny LLaVA-1.5 (CLIP tower, features of layer -2, CLS dropped by the
projector): the LLM receives the pure rule's tokens (tomviz.merge.visionzip) computed on tensors read here
independently, with eager attention, from the unpatched vision tower."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import tiny
from tomviz import vlm
from tomviz.merge.visionzip import visionzip
from tomviz.models import llm
from tomviz.models.vlm import wrap

QUESTION = "what is in this image ?"


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    model, processor = tiny.llava(image_size=48, vision_layers=3, tower="clip")  # 6 x 6 patches + CLS
    model.config.vision_feature_layer = -2  # LLaVA-1.5: the second-last layer's output
    return wrap("llava-clip", model, processor)


@pytest.fixture(scope="module")
def inputs(loaded):
    return vlm.prepare(loaded, tiny.photo(), QUESTION)


def _reference(loaded, inputs, dominant, contextual):
    """The pure rule on layer -2's tensors from the unpatched tower (eager attention probabilities; keys from
    ``k_proj`` of the layer's normalised input), then the projector: ``(result, [1, n, D])``."""
    tower = loaded.model.model.vision_tower
    layer = tower.config.num_hidden_layers - 2
    tower.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            out = tower(inputs.tensors["pixel_values"], output_attentions=True, output_hidden_states=True)
    finally:
        tower.config._attn_implementation = "sdpa"
    block = tower.encoder.layers[layer]
    with torch.no_grad():
        keys = block.self_attn.k_proj(block.layer_norm1(out.hidden_states[layer]))  # [T, N, H*d]
        heads = tower.config.num_attention_heads
        keys = keys.view(*keys.shape[:2], heads, -1).transpose(1, 2)  # [T, H, N, d]
        result = visionzip(out.hidden_states[-2], out.attentions[layer], keys, dominant=dominant, contextual=contextual)
        return result, loaded.model.model.multi_modal_projector(result.hidden)


def test_llm_receives_the_rule_on_layer_minus_two(loaded, inputs):
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction("boundary", "visionzip", 0.5))
    boundary = prefill.stages["boundary"]
    # 36 patches, ratio 0.5: 18 tokens per crop, the README's share: 15 dominant (CLS counted) + 3 contextual
    assert (boundary.meta["dominant"], boundary.meta["contextual"]) == (15, 3)
    result, projected = _reference(loaded, inputs, 15, 3)
    image = torch.zeros(prefill.embeds.shape[1], dtype=torch.bool)
    image[prefill.visual] = True
    image[int(prefill.visual.nonzero()[0, 0]) - 1] = True  # the CLS token sits first, before the patches
    assert int(image.sum()) == 18 and not bool(prefill.visual[int(image.nonzero()[0, 0])])
    assert (prefill.embeds[0, image] - projected[0]).abs().max() < 1e-5  # same values, same order
    # the trace: the 36 patches onto the 14 dominant patches (alone) and 3 contextual groups, nothing pruned
    layer = boundary.layers[-1]
    assert layer.num_tokens == 17 == int(prefill.visual.sum())
    expected = result.plan.dst[0, 1:].numpy() - 1  # the rule's slots, CLS (slot 0) left out
    np.testing.assert_array_equal(layer.source, expected)
    np.testing.assert_array_equal(np.bincount(layer.source, minlength=17), layer.sizes)
    assert (layer.sizes[:14] == 1).all() and layer.sizes[14:].sum() == 36 - 14


def test_explicit_counts_and_cached_decoding(loaded, inputs):
    """``dominant``/``contextual`` per crop as the README sets them; greedy decoding with the KV cache equals
    recomputing the whole sequence."""
    red = vlm.Reduction("boundary", "visionzip", 0.5, method_options={"dominant": 9, "contextual": 2})
    prefill = vlm.build_prefill(loaded, inputs, red)
    assert prefill.stages["boundary"].layers[-1].num_tokens == 10 and prefill.key_bias is None
    generated = vlm.generate(loaded, prefill, max_new_tokens=5)
    answer = torch.tensor(generated.tokens)
    with torch.inference_mode(), llm.LLMState(visual=torch.cat([prefill.visual, torch.zeros(len(answer), dtype=torch.bool)])):
        embeds = torch.cat([prefill.embeds, loaded.language_model.get_input_embeddings()(answer[None])], 1)
        logits = loaded.model(inputs_embeds=embeds).logits[0]
    assert logits[-(len(answer) + 1):-1].argmax(-1).tolist() == generated.tokens
    assert (logits[-(len(answer) + 1)] - generated.first_logits).abs().max() < 1e-4


def test_no_reduction_is_the_unpatched_model(loaded, inputs):
    with torch.inference_mode():
        reference = loaded.model(**inputs.tensors).logits[0]
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction("boundary", "visionzip", 0.0))
    with torch.inference_mode(), llm.LLMState(visual=prefill.visual):
        ours = loaded.model(inputs_embeds=prefill.embeds).logits[0]
    assert ours.shape == reference.shape and (ours - reference).abs().max() < 1e-4


def test_inspect_counts(loaded):
    res = vlm.inspect_vlm(loaded, tiny.photo(), QUESTION, place="boundary", method="visionzip", ratio=0.75, max_new_tokens=3)
    assert res.token_counts["llm_input"] == 8  # 9 per crop: CLS + 8 (1 contextual)
    assert res.answer_attention.shape[2] == 8


@pytest.mark.parametrize("red,message", [
    (vlm.Reduction("boundary", "visionzip", 0.5, method_options={"dominant": 0, "contextual": 4}), "it counts CLS"),
    (vlm.Reduction("boundary", "visionzip", 0.5, vtu=True), "virtual token unmerging"),
    (vlm.Reduction("boundary", "visionzip", 0.5, method_options={"dominant": 30, "contextual": 10}), "cannot keep"),
])
def test_bad_settings_are_refused(loaded, inputs, red, message):
    with pytest.raises(ValueError, match=message):
        vlm.build_prefill(loaded, inputs, red)


@pytest.mark.parametrize("family", ["smolvlm", "llava-siglip"])
def test_families_without_that_place_are_refused(family):
    model, processor = tiny.smolvlm() if family == "smolvlm" else tiny.llava(tower="siglip")
    loaded = wrap(family, model, processor)
    inputs = vlm.prepare(loaded, tiny.photo(), QUESTION)
    with pytest.raises(ValueError, match="visionzip_paper"):
        vlm.build_prefill(loaded, inputs, vlm.Reduction("boundary", "visionzip", 0.5))
