"""Qwen2-VL and Qwen2.5-VL (tiny random models): reduction at the boundary and inside the LLM with multimodal RoPE.

The position ids follow Qwen2-VL's definition (Wang et al. 2024, arXiv 2409.12191, "Multimodal Rotary Position
Embedding"; transformers 5.24 ``models/qwen2_vl/modeling_qwen2_vl.py`` ``Qwen2VLModel.get_rope_index``): text tokens share one id on all three axes and count on by one; an
image of ``(h, w)`` merged tokens starting at ``s`` gives token ``k`` the ids ``(s, s + k // w, s + k % w)``; the text
after it starts at the largest id + 1.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests import tiny
from tomviz import vlm
from tomviz.models import hub, llm
from tomviz.models.qwen2_vl import rope_positions
from tomviz.models.vlm import wrap
from tomviz.vlm.decode import answer_game

QUESTION = "what is in this image ?"
REDUCTIONS = [
    vlm.Reduction("boundary", "tome", 0.5),
    vlm.Reduction("boundary", "random_prune", 0.5, seed=3),
    vlm.Reduction("boundary", "downsample", 0.75),
    vlm.Reduction("boundary", "aim", 0.5),
    vlm.Reduction("llm", "fastv", 0.5, fastv_layer=1),
    vlm.Reduction("llm", "aim", 0.5, method_options={"start": 1}),
]


@pytest.fixture(scope="module", params=["2", "2.5"])
def loaded(request):
    model, processor = tiny.qwen2_vl(request.param, seed=0)
    return wrap(f"qwen{request.param}", model, processor)


@pytest.fixture(scope="module")
def inputs(loaded):
    return vlm.prepare(loaded, tiny.photo(40), QUESTION)


def test_positions_follow_mrope(loaded, inputs):
    """The prompt's ids by the definition above: here a 4 x 4 grid of merged tokens (32 px, 4 px patches, 2 x 2)."""
    ids = inputs.tensors["input_ids"][0]
    image = (ids == loaded.image_token_id).nonzero()[:, 0]
    assert image.numel() == 16 and bool((image.diff() == 1).all())
    start = int(image[0])
    expected = torch.arange(len(ids)).expand(3, -1).clone()
    k = torch.arange(16)
    expected[:, image] = torch.stack([torch.full((16,), start), start + k // 4, start + k % 4])
    expected[:, image[-1] + 1:] = torch.arange(len(ids) - int(image[-1]) - 1) + start + 4
    assert torch.equal(rope_positions(loaded.model, inputs.tensors)[:, 0], expected)


def test_no_reduction_matches_unpatched(loaded, inputs):
    with torch.inference_mode():
        reference = loaded.model(**inputs.tensors).logits[0]  # patched, no state: the original forwards
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction())
    with torch.inference_mode(), llm.LLMState(visual=prefill.visual):
        ours = loaded.model(inputs_embeds=prefill.embeds, **prefill.position_ids(prefill.embeds.shape[1])).logits[0]
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() < 1e-4
    assert (vlm.generate(loaded, prefill, max_new_tokens=3).first_logits - reference[-1]).abs().max() < 1e-4


def test_greedy_decoding_matches_generate_and_ignores_rope_deltas(loaded, inputs):
    """Our decoding continues from the right position (transformers' generate agrees), whatever ``rope_deltas``
    an earlier call left on the model."""
    out = loaded.model.generate(**inputs.tensors, max_new_tokens=6, do_sample=False, output_logits=True,
                                return_dict_in_generate=True)
    expected = out.sequences[0, inputs.tensors["input_ids"].shape[1]:].tolist()
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction())
    loaded.model.model.rope_deltas = torch.tensor([[57]])  # stale, as another request could leave it
    steps = []
    hook = loaded.model.register_forward_hook(lambda m, a, output: steps.append(output.logits[0, -1]))
    try:
        ours = vlm.generate(loaded, prefill, max_new_tokens=6)
    finally:
        hook.remove()
        loaded.model.model.rope_deltas = None
    assert ours.tokens == expected[: len(ours.tokens)]
    for mine, theirs in zip(steps, out.logits):  # every step's logits, not only the argmax
        assert (mine - theirs[0]).abs().max() < 1e-4


def _first_members(trace) -> torch.Tensor:
    """``[V']`` each output group's first (smallest) input token, from the boundary trace."""
    source = torch.as_tensor(trace.layers[-1].source).long()
    groups = trace.layers[-1].num_tokens
    first = torch.full((groups,), source.numel())
    kept = source >= 0
    return first.scatter_reduce(0, source[kept], torch.arange(source.numel())[kept], "amin")


@pytest.mark.parametrize("reduction", REDUCTIONS, ids=lambda r: f"{r.place}-{r.method}")
def test_reduction_positions_counts_and_cached_decoding(loaded, inputs, reduction):
    """The kept tokens keep their original ids; the LLM gets the token count the trace says; greedy decoding with
    the KV cache equals recomputing the whole sequence; each step's ids count on from the prefill's largest."""
    full = rope_positions(loaded.model, inputs.tensors)  # [3, 1, L]
    prefill = vlm.build_prefill(loaded, inputs, reduction)
    boundary = prefill.stages["boundary"]
    ids = inputs.tensors["input_ids"][0]
    image = (ids == loaded.image_token_id).nonzero()[:, 0]
    columns = torch.zeros(prefill.embeds.shape[1], dtype=torch.long)  # the prompt token whose ids each token takes
    columns[~prefill.visual] = (ids != loaded.image_token_id).nonzero()[:, 0]
    columns[prefill.visual] = image[_first_members(boundary)]  # the j-th visual token is the trace's group j
    assert torch.equal(prefill.positions, full[..., columns])
    lengths, steps = [], []
    layers = loaded.language_model.layers
    hooks = [layer.register_forward_hook(lambda m, a, out: lengths.append(out.shape[1])) for layer in layers]
    hooks.append(loaded.language_model.register_forward_pre_hook(
        lambda m, a, kw: steps.append(kw["position_ids"]), with_kwargs=True))
    try:
        generated = vlm.generate(loaded, prefill, max_new_tokens=5)
    finally:
        for hook in hooks:
            hook.remove()
    text = int((~prefill.visual).sum())
    assert int(prefill.visual.sum()) == boundary.layers[-1].num_tokens
    assert lengths[0] == text + boundary.layers[-1].num_tokens == prefill.embeds.shape[1]
    if reduction.place == "llm" and reduction.method == "fastv":
        kept = boundary.num_input_tokens - round(reduction.ratio * boundary.num_input_tokens)
        assert lengths[1:len(layers)] == [text + kept] * (len(layers) - 1)
    top = int(full.max())
    assert [int(s.flatten()[0]) for s in steps[1:]] == list(range(top + 1, top + len(steps)))
    forced = vlm.teacher_forced(loaded, prefill, generated.tokens)
    assert (forced.first_logits - generated.first_logits).abs().max() < 1e-4
    assert abs(float(forced.log_probs[0]) - float(generated.first_logits.log_softmax(-1)[generated.tokens[0]])) < 1e-4


def test_cached_decoding_equals_recomputation(loaded, inputs):
    """Under a boundary reduction each generated token is the argmax of a full recomputation with the same ids."""
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction("boundary", "random_prune", 0.5, seed=1))
    generated = vlm.generate(loaded, prefill, max_new_tokens=5)
    answer = torch.tensor(generated.tokens)
    with torch.inference_mode():
        embeds = torch.cat([prefill.embeds, loaded.language_model.get_input_embeddings()(answer[None])], 1)
        pad = torch.zeros(len(answer), dtype=torch.bool)
        with llm.LLMState(visual=torch.cat([prefill.visual, pad])):
            logits = loaded.model(inputs_embeds=embeds, **prefill.position_ids(embeds.shape[1])).logits[0]
    assert logits[-(len(answer) + 1):-1].argmax(-1).tolist() == generated.tokens


def test_pruning_equals_masking_the_pruned_keys(loaded, inputs):
    """Pruned visual tokens removed, the rest at their original ids = the full prompt with the pruned tokens masked
    out of every attention as keys: the last token's logits agree (renumbered positions would not)."""
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction("boundary", "random_prune", 0.5, seed=2))
    full = vlm.build_prefill(loaded, inputs, vlm.Reduction())
    kept = torch.as_tensor(prefill.stages["boundary"].layers[-1].source) >= 0  # [V] the visual tokens kept
    bias = torch.zeros(full.embeds.shape[1])
    bias[full.visual.nonzero()[:, 0][~kept]] = torch.finfo(torch.float32).min
    with torch.inference_mode():
        with llm.LLMState(visual=full.visual, key_bias=bias):
            masked = loaded.model(inputs_embeds=full.embeds, **full.position_ids(full.embeds.shape[1])).logits[0, -1]
        with llm.LLMState(visual=prefill.visual):
            dropped = loaded.model(inputs_embeds=prefill.embeds, **prefill.position_ids(prefill.embeds.shape[1])).logits[0, -1]
            contiguous = torch.arange(prefill.embeds.shape[1])[None]  # [1, L'] the same id on the three axes
            renumbered = loaded.model(inputs_embeds=prefill.embeds, position_ids=contiguous).logits[0, -1]
    assert (dropped - masked).abs().max() < 1e-5
    assert (renumbered - masked).abs().max() > 10 * (dropped - masked).abs().max()


@pytest.mark.parametrize("version", ["2", "2.5"])
def test_recomputed_attention_matches_eager(version):
    """The attention tomviz recomputes inside the LLM (FastV's and AIM's input, the answer's attention) applies the
    multimodal RoPE as the model does: equal to transformers' eager attention weights of every layer."""
    model, processor = tiny.qwen2_vl(version, seed=0)
    loaded = wrap("qwen", model, processor)
    inputs = vlm.prepare(loaded, tiny.photo(40), QUESTION)
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction())
    answer = [10, 11]
    forced = vlm.teacher_forced(loaded, prefill, answer, record_attention=True)
    eager, _ = tiny.qwen2_vl(version, seed=0)
    eager.set_attn_implementation("eager")
    length = prefill.embeds.shape[1]
    with torch.inference_mode():
        embeds = torch.cat([prefill.embeds, eager.get_input_embeddings()(torch.tensor([answer]))], 1)
        out = eager(inputs_embeds=embeds, output_attentions=True, **prefill.position_ids(length + len(answer)))
    assert len(forced.attention) == len(out.attentions)
    for ours, theirs in zip(forced.attention, out.attentions):
        expected = theirs[0].mean(0)[length - 1:length - 1 + len(answer)]  # [A, L + A] the queries that predict the answer
        assert (ours - expected).abs().max() < 1e-5


def test_inspect_with_and_without_reduction(loaded):
    import tomviz

    res = tomviz.inspect(loaded, (tiny.photo(40), QUESTION), ratio=0.5, method="tome", place="boundary", max_new_tokens=4)
    assert res.token_counts["visual"] == 16 and res.token_counts["llm_input"] == 8
    assert res.answer and res.reference_answer
    value, players = answer_game(loaded, res._prefill, res._reference_tokens)  # batched coalitions, original ids
    both = value(np.array([[True] * players, [True] * (players - 1) + [False]]))
    assert players == 8 and abs(both[0] - res.fidelity.log_likelihood) < 1e-4 and both[1] != both[0]
    same = tomviz.inspect(loaded, (tiny.photo(40), QUESTION), ratio=0.0, place="boundary", max_new_tokens=4)
    assert same.fidelity.exact_match and abs(same.fidelity.log_likelihood - same.fidelity.reference_log_likelihood) < 1e-4


@pytest.mark.parametrize("reduction, message", [
    (vlm.Reduction("encoder", "evit", 0.5), "reads the vision encoder's attention"),
    (vlm.Reduction("boundary", "hiprune", 0.5), "reads the vision encoder's attention"),
    (vlm.Reduction("boundary", "visionzip", 0.5), "no such place"),
    (vlm.Reduction("boundary", "tome", 0.5, vtu=True), "multimodal RoPE"),
], ids=["encoder-evit", "hiprune", "visionzip", "vtu"])
def test_unsupported_places_say_so(loaded, inputs, reduction, message):
    with pytest.raises(ValueError, match=message):
        vlm.build_prefill(loaded, inputs, reduction)


def test_cpu_cap_says_gpu_space(monkeypatch):
    import huggingface_hub

    meta = SimpleNamespace(parameter_count={"BF16": 2_208_985_600})  # Qwen2-VL-2B-Instruct
    monkeypatch.setattr(hub, "MAX_PARAMETERS", 400_000_000)
    monkeypatch.setattr(hub, "MAX_PARAMETERS_CUDA", 8_000_000_000)
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", lambda repo: meta)
    with pytest.raises(hub.ModelLoadError, match="2209M parameters.*up to 400M on CPU.*needs a GPU Space"):
        hub.check_size("Qwen/Qwen2-VL-2B-Instruct", "cpu")
    hub.check_size("Qwen/Qwen2-VL-2B-Instruct", "cuda")


def test_tab_lists_qwen():
    from tomviz.ui.vlm_tab import VLM_MODELS

    assert {"Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"} <= set(VLM_MODELS)


@pytest.mark.parametrize("version", ["2", "2.5"])
def test_folder_loads_without_torchvision(tmp_path, version):
    """A saved folder loads through AutoModelForImageTextToText and, where AutoProcessor needs torchvision (for
    videos), the image-only processor built from the folder's files."""
    import tomviz

    model, processor = tiny.qwen2_vl(version, seed=0)
    model.save_pretrained(tmp_path)
    processor.tokenizer.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    loaded = tomviz.load(str(tmp_path), device="cpu")
    assert loaded.adapter.family == "qwen2_vl" and type(loaded.model) is type(model)
    assert type(loaded.processor).__name__.startswith("ImageOnlyQwen2")
    res = tomviz.inspect(loaded, (tiny.photo(40), QUESTION), ratio=0.5, place="llm", method="fastv", fastv_layer=1,
                         max_new_tokens=2)
    assert res.token_counts["llm_input"] == 16 and res.token_counts["llm_after_k"] == 8


def test_tab_answers_at_every_place(monkeypatch):
    import gradio as gr

    import tomviz
    from tomviz.ui import vlm_tab

    model, processor = tiny.qwen2_vl("2.5", seed=0)
    qwen = tomviz.load(model, processor=processor, device="cpu")
    monkeypatch.setattr(vlm_tab.tomviz, "load", lambda name, untrusted=False: qwen)
    photo = tiny.photo().resize((80, 48))
    out = vlm_tab.ask(photo, QUESTION, "Qwen/Qwen2.5-VL-3B-Instruct", "boundary", "tome", 0.5, 3)
    assert out.overlay.size == out.attention.size == photo.size
    encoder = vlm_tab.ask(photo, QUESTION, "Qwen/Qwen2.5-VL-3B-Instruct", "encoder", "tome", 0.5, 3)
    assert encoder.overlay.size == photo.size
    assert ("tome" in [name for _, name in vlm_tab.method_choices("encoder")]
            and "encoder" in [value for _, value in vlm_tab.PLACES])
    with pytest.raises(gr.Error, match="reads the vision encoder's attention"):
        vlm_tab.ask(photo, QUESTION, "Qwen/Qwen2.5-VL-3B-Instruct", "encoder", "evit", 0.5, 3)
