"""LLaVA-OneVision (anyres tiles + image_newline tokens) on a tiny random model that builds offline."""
from __future__ import annotations

import pytest
import torch

from tests import tiny
from tomviz import vlm
from tomviz.models.vlm import wrap

QUESTION = "what is in this image ?"


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    model, processor = tiny.onevision()
    return wrap("onevision", model, processor)


@pytest.fixture(scope="module")
def inputs(loaded):
    return vlm.prepare(loaded, tiny.photo().resize((80, 48)), QUESTION)  # wide: 2 anyres tiles, cropped


def test_adapter_and_layout(loaded, inputs):
    assert loaded.adapter.family == "llava_onevision"
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction())
    image_tokens = int((inputs.tensors["input_ids"][0] == loaded.image_token_id).sum())
    newlines = image_tokens - int(prefill.visual.sum())
    assert newlines == 4  # one image_newline per row of the anyres grid (4 rows once cropped), kept like text
    newline = loaded.model.model.image_newline
    assert int((prefill.embeds[0] == newline).all(-1).sum()) == newlines


def test_no_reduction_matches_unpatched(loaded, inputs):
    with torch.inference_mode():
        reference = loaded.model(**inputs.tensors).logits[0]
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction())
    with torch.inference_mode(), prefill.llm_state():
        ours = loaded.model(inputs_embeds=prefill.embeds).logits[0]
    assert (ours - reference).abs().max() < 1e-4
    expected = loaded.model.generate(**inputs.tensors, max_new_tokens=4, do_sample=False)
    generated = vlm.generate(loaded, prefill, max_new_tokens=4)
    assert generated.tokens == expected[0, inputs.tensors["input_ids"].shape[1]:].tolist()[: len(generated.tokens)]


@pytest.mark.parametrize("red", [
    vlm.Reduction("boundary", "tome", 0.5),
    vlm.Reduction("boundary", "tome", 0.5, vtu=True),
    vlm.Reduction("boundary", "dtome", 0.5, method_options={"threshold": -1.0}),
    vlm.Reduction("boundary", "random_prune", 0.5),
    vlm.Reduction("llm", "fastv", 0.5, fastv_layer=1),
], ids=lambda r: f"{r.place}-{r.method}{'-vtu' if r.vtu else ''}")
def test_grid_free_reductions(loaded, red):
    res = vlm.inspect_vlm(loaded, tiny.photo().resize((80, 48)), QUESTION, place=red.place, method=red.method,
                          ratio=red.ratio, max_new_tokens=3, vtu=red.vtu, fastv_layer=red.fastv_layer,
                          method_options=red.method_options)
    visual = res.token_counts["visual"]
    expected = visual - round(0.5 * visual)
    assert (res.token_counts["llm_input"] if red.place == "boundary" else res.token_counts["llm_after_k"]) == expected
    # each answer step's attention, per LLM layer, over the visual tokens the LLM received
    assert res.answer_attention.shape == (len(loaded.language_model.layers), len(res.answer_tokens), res.token_counts["llm_input"])


@pytest.mark.parametrize("red,message", [
    (vlm.Reduction("encoder", "tome", 0.5), "not supported"),
    (vlm.Reduction("boundary", "downsample", 0.5), "not equal"),
    (vlm.Reduction("boundary", "hiprune", 0.5), "not equal"),
    (vlm.Reduction("boundary", "visionzip_paper", 0.5), "not equal"),
    (vlm.Reduction("boundary", "visionzip", 0.5), "no such place"),
])
def test_refused_with_a_message(loaded, inputs, red, message):
    with pytest.raises(ValueError, match=message):
        vlm.build_prefill(loaded, inputs, red)


def test_folder_loads_without_torchvision(tmp_path):
    """A OneVision folder (saved model, tokenizer, image processor) loads with an image-only processor."""
    import json

    import tomviz
    from tomviz.models.vlm import LoadedVLM

    model, processor = tiny.onevision()
    model.save_pretrained(tmp_path)
    processor.tokenizer.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text(json.dumps({"num_image_tokens": processor.num_image_tokens,
                                                                 "vision_feature_select_strategy": "full"}))
    loaded = tomviz.load(str(tmp_path), device="cpu")
    assert isinstance(loaded, LoadedVLM) and loaded.adapter.family == "llava_onevision"
    res = tomviz.inspect(loaded, (tiny.photo(), QUESTION), ratio=0.5, place="boundary", max_new_tokens=2)
    assert res.token_counts["llm_input"] == res.token_counts["visual"] - round(0.5 * res.token_counts["visual"])
