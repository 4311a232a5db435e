"""Every adapter on a tiny random model: r=0 is exact, traces are partitions, protected tokens stay alone."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import transformers as tf

import tomviz
from tests import tiny
from tomviz.merge.request import MergeRequest

IMAGE = 64  # px: 8 x 8 patches of 8 px, 65 tokens with CLS


def _clip():
    return tiny.clip(text=dict(num_hidden_layers=2), vision=dict(image_size=IMAGE))


# name → (builder, protected tokens: CLS, DeiT's distillation token, DINOv2's registers)
MODELS = {
    "vit": (lambda: tiny.vit(image_size=IMAGE), 1),
    "vit-classifier": (lambda: tiny.vit(classifier=5, image_size=IMAGE), 1),
    "deit": (lambda: tiny.deit(image_size=IMAGE), 2),
    "deit-teacher": (lambda: tiny.deit(classifier=5, image_size=IMAGE), 2),
    "dinov2": (lambda: tiny.dinov2(image_size=IMAGE), 1),
    "dinov2-registers": (lambda: tiny.dinov2(registers=4, image_size=IMAGE), 5),
    "dinov2-classifier": (lambda: tiny.dinov2(classifier=5, image_size=IMAGE), 1),
    "dinov2-registers-classifier": (lambda: tiny.dinov2(registers=4, classifier=5, image_size=IMAGE), 5),
    "clip-vision": (lambda: tiny.clip_vision(image_size=IMAGE), 1),
    "clip": (_clip, 1),
    "bert": (tiny.bert, 1),
    "roberta": (tiny.roberta, 1),
}


def _inputs(model, name):
    if name in ("bert", "roberta"):
        ids = torch.randint(5, 120, (1, 24))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return torch.randn(1, 3, 64, 64)


def _forward(model, x):
    with torch.no_grad():
        if isinstance(model, tf.CLIPModel):
            return model.vision_model(pixel_values=x)
        return model(**x) if isinstance(x, dict) else model(pixel_values=x)


def _main_output(out):
    for key in ("logits", "last_hidden_state"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    raise AssertionError("no output")


def _check_partition(trace, num_protected):
    n0 = trace.num_input_tokens
    counts = trace.token_counts()
    schedule = trace.meta["schedule"]
    assert counts == [n0 - sum(schedule[:i]) for i in range(len(schedule) + 1)]
    for layer in range(trace.num_layers):
        groups, sizes = trace.groups(layer), trace.sizes(layer)
        assert groups.shape == (n0,) and (groups >= 0).all()
        assert np.bincount(groups, minlength=len(sizes)).tolist() == sizes.astype(int).tolist()
        assert groups[:num_protected].tolist() == list(range(num_protected))
        assert (sizes[:num_protected] == 1).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_r0_is_exact_and_merging_gives_valid_traces(name):
    build, num_protected = MODELS[name]
    model = build().eval()
    x = _inputs(model, name)
    reference = _main_output(_forward(model, x))
    if isinstance(model, tf.CLIPModel):
        loaded = tomviz.load(model)
        res = tomviz.inspect(loaded, x, r=0)
        assert loaded.clip_text
        got = res.outputs.last_hidden_state
    else:
        res = tomviz.inspect(model, x, r=0)
        got = _main_output(res.outputs)
    if got is not None:
        assert torch.allclose(got, reference, atol=1e-5), (got - reference).abs().max()
    assert res.trace.meta["num_protected"] == num_protected

    merged = tomviz.inspect(model, x, ratio=0.6)
    assert merged.trace.token_counts()[-1] < merged.trace.num_input_tokens
    _check_partition(merged.trace, num_protected)
    decreasing = tomviz.inspect(model, x, r=(3, -1))
    _check_partition(decreasing.trace, num_protected)


def test_clip_text_input_goes_through_full_model():
    model = _clip().eval()
    loaded = tomviz.load(model)
    ids = torch.randint(1, 120, (1, 7))
    res = tomviz.api.run(
        loaded, loaded.prepare(torch.randn(1, 3, 64, 64)),
        MergeRequest(method="tome", r=4).config(trace=True), input_ids=ids,
    )
    outputs, state = res
    assert outputs.logits_per_image.shape == (1, 1)
    assert state.trace().token_counts()[-1] == 65 - 16


def test_patch_and_unpatch_restore_the_model():
    model = tiny.vit(image_size=IMAGE)
    x = torch.randn(2, 3, 64, 64)
    before = _forward(model, x).last_hidden_state
    tomviz.patch(model, r=4)
    tomviz.patch(model, r=4)  # applying twice is safe
    merged = _forward(model, x).last_hidden_state
    assert merged.shape == (2, 65 - 16, 32)
    tomviz.unpatch(model)
    tomviz.unpatch(model)  # removing twice is safe
    assert "forward" not in model.__dict__ and all("forward" not in b.__dict__ for b in model.layers)
    assert all(not b.attention.k_proj._forward_hooks for b in model.layers)
    assert torch.equal(_forward(model, x).last_hidden_state, before)


def test_deit_distillation_token_is_read_by_the_head():
    model = tiny.deit(classifier=5, image_size=IMAGE)
    res = tomviz.inspect(model, torch.randn(1, 3, 64, 64), r=6)
    # both heads read positions 0 and 1: CLS and distillation token, never merged
    for layer in range(res.trace.num_layers):
        assert res.trace.groups(layer)[:2].tolist() == [0, 1]


@pytest.mark.parametrize("name", ["dinov2-classifier", "dinov2-registers-classifier"])
def test_dinov2_classifier_pools_merged_patch_tokens_by_size(name):
    build, num_protected = MODELS[name]
    model = build().eval()
    backbone = model.dinov2 if hasattr(model, "dinov2") else model.dinov2_with_registers
    seen = []
    handle = backbone.layernorm.register_forward_hook(lambda module, args, output: seen.append(output))
    res = tomviz.inspect(model, torch.randn(1, 3, 64, 64), r=6)
    handle.remove()
    tokens = seen[-1][0]  # [N_L, C]
    sizes = torch.as_tensor(res.trace.sizes(res.trace.num_layers - 1))[num_protected:, None]
    assert sizes.max() > 1  # merged, so weighting matters
    patches = tokens[num_protected:]
    with torch.no_grad():
        weighted = model.classifier(torch.cat([tokens[0], (patches * sizes).sum(0) / sizes.sum()]))
        plain = model.classifier(torch.cat([tokens[0], patches.mean(0)]))
    assert torch.allclose(res.outputs.logits[0], weighted, atol=1e-5)
    assert not torch.allclose(res.outputs.logits[0], plain, atol=1e-4)
    tomviz.unpatch(model)
    assert not model.classifier._forward_pre_hooks and not backbone.layernorm._forward_hooks


def test_bert_padding_never_merges_with_real_tokens():
    model = tiny.bert()
    ids = torch.randint(5, 120, (2, 20))
    mask = torch.ones_like(ids)
    mask[0, 12:] = 0
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).last_hidden_state
    res = tomviz.inspect(model, {"input_ids": ids, "attention_mask": mask}, r=0)
    assert torch.allclose(res.outputs.last_hidden_state, reference, atol=1e-5)
    # batch element 0 has padding: follow it through the merges
    config = MergeRequest(method="tome", r=3).config(trace=True)
    loaded = tomviz.load(model)
    _, state = tomviz.api.run(loaded, loaded.prepare({"input_ids": ids, "attention_mask": mask}), config)
    trace = state.trace()
    for layer in range(trace.num_layers):
        groups = trace.groups(layer)
        assert not set(groups[:12].tolist()) & set(groups[12:].tolist())
    assert state.valid.shape == (2, 20 - 12) and int(state.valid[0].sum()) < 12 and bool(state.valid[1].all())


def test_unsupported_model_is_named():
    model = tiny.gpt2()
    with pytest.raises(tomviz.ModelLoadError, match="GPT2Model"):
        tomviz.load(model)


def test_concurrent_calls_on_one_model_keep_their_own_settings():
    model = tiny.vit(image_size=IMAGE)
    x = torch.randn(1, 3, 64, 64)
    results: dict[int, list[int]] = {}

    def work(r: int) -> None:
        for _ in range(5):
            results[r] = tomviz.inspect(model, x, r=r).trace.token_counts()

    threads = [threading.Thread(target=work, args=(r,)) for r in (0, 2, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in (0, 2, 5):
        assert results[r] == [65 - r * i for i in range(5)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["vit", "dinov2-registers", "bert"])
def test_half_precision_merges(name, dtype):
    """The GPU path runs fp16: masks, sizes and matching must work in the model's dtype."""
    build, num_protected = MODELS[name]
    model = build().eval().to(dtype)
    x = _inputs(model, name)
    if isinstance(x, dict):
        x["attention_mask"][:, -5:] = 0  # padding: an additive mask in the half dtype
    else:
        x = x.to(dtype)
    res = tomviz.inspect(model, x, r=3)
    out = res.outputs.last_hidden_state
    assert out.dtype == dtype and torch.isfinite(out).all()
    _check_partition(res.trace, num_protected)
    assert res.trace.token_counts()[-1] < res.trace.num_input_tokens
    if isinstance(x, dict):  # padding stays among padding
        last = res.trace.groups(res.trace.num_layers - 1)
        real, pad = set(last[:-5].tolist()), set(last[-5:].tolist())
        assert not real & pad
