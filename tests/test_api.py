"""The public API on the embedded default models (no network)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tomviz
from tests import tiny

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def photo():
    return Image.open(ASSETS / "chelsea.png")


def _assert_valid(trace, protected=1):
    n0 = trace.num_input_tokens
    for layer in range(trace.num_layers):
        groups, sizes = trace.groups(layer), trace.sizes(layer)
        kept = groups >= 0
        assert np.bincount(groups[kept], minlength=len(sizes)).tolist() == sizes.astype(int).tolist()
        assert groups[:protected].tolist() == list(range(protected))
    assert trace.token_counts()[-1] < n0


@pytest.mark.slow
def test_dinov2_small_default(photo):
    model = tomviz.load("dinov2-small")
    assert model is tomviz.load("dinov2-small")  # cached
    plain = tomviz.inspect(model, photo, r=0)
    with torch.no_grad():
        reference = model.model(**plain.inputs.tensors).last_hidden_state
    assert torch.allclose(plain.outputs.last_hidden_state, reference, atol=1e-5)
    res = tomviz.inspect(model, photo, ratio=0.5)
    trace = res.trace
    assert trace.meta["patch_grid"] == [16, 16] and trace.num_input_tokens == 257
    assert trace.token_counts()[-1] == 257 - 128
    _assert_valid(trace)
    cos = torch.nn.functional.cosine_similarity(res.outputs.pooler_output, plain.outputs.pooler_output).item()
    assert 0.5 < cos <= 1.0 + 1e-6  # merging half the tokens keeps the embedding close


@pytest.mark.slow
def test_minilm_default():
    res = tomviz.inspect("minilm", "Token merging makes transformers faster by merging similar tokens.", ratio=0.4)
    trace = res.trace
    assert trace.meta["tokens"][0] == "[CLS]" and len(trace.meta["tokens"]) == trace.num_input_tokens
    _assert_valid(trace)


@pytest.mark.slow
def test_long_prompt_is_truncated_and_says_so():
    model = tomviz.load("minilm")
    res = tomviz.inspect(model, "word " * 2000, r=0)
    assert res.inputs.meta["truncated"] and res.trace.num_input_tokens == model.max_length


@pytest.mark.slow
def test_bad_input_messages():
    with pytest.raises(ValueError, match="empty"):
        tomviz.inspect("minilm", "   ")
    with pytest.raises(ValueError, match="text model"):
        tomviz.inspect("minilm", Image.new("RGB", (32, 32)))
    with pytest.raises(tomviz.ModelLoadError, match="no/such-model"):
        tomviz.load("no/such-model")
    with pytest.raises(tomviz.ModelLoadError):
        tomviz.load("")


def test_unsupported_local_folder_is_named(tmp_path):
    tiny.gpt2().save_pretrained(tmp_path)
    with pytest.raises(tomviz.ModelLoadError, match="gpt2"):
        tomviz.load(str(tmp_path))


def test_local_folder_of_supported_model_loads(tmp_path, photo):
    tiny.vit(classifier=True, num_hidden_layers=2).save_pretrained(tmp_path)
    model = tomviz.load(str(tmp_path))
    assert model.labels == {0: "LABEL_0", 1: "LABEL_1"} and model.adapter.family == "vit"  # transformers' default names
    res = tomviz.inspect(model, photo, r=3)
    assert res.outputs.logits.shape == (1, 2) and res.trace.token_counts() == [17, 14, 11]


@pytest.mark.slow
def test_model_cache_is_bounded(tmp_path, monkeypatch):
    from tomviz.models import loading

    monkeypatch.setattr(loading, "MAX_OTHER_MODELS", 1)
    folders = []
    for i in range(2):
        folder = tmp_path / f"m{i}"
        tiny.vit(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, image_size=16).save_pretrained(folder)
        folders.append(str(folder))
    first = tomviz.load(folders[0])
    tomviz.load("dinov2-small")
    tomviz.load(folders[1])
    cached = [key[0] for key in loading._CACHE]
    assert folders[1] in cached and folders[0] not in cached and "dinov2-small" in cached
    assert tomviz.load(folders[0]) is not first  # reloaded after eviction


def test_package_names_load_on_first_use():
    """``tomviz.<name>`` is the object its defining module holds (the facade imports it lazily)."""
    import importlib

    assert sorted(tomviz.__all__) == sorted(tomviz._EXPORTS)
    for name, module in tomviz._EXPORTS.items():
        assert getattr(tomviz, name) is getattr(importlib.import_module(module), name)
    assert tomviz.trace.Trace is tomviz.Trace  # a submodule, as after the eager imports
    with pytest.raises(AttributeError, match="has no attribute 'nosuch'"):
        tomviz.nosuch  # noqa: B018
