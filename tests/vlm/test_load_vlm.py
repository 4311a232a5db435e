"""Loading vision-language models: an instance with its processor, a local folder, the per-device cap."""
from __future__ import annotations

import json

import pytest

import tomviz
from tests import tiny
from tomviz.models import hub
from tomviz.models.vlm import LoadedVLM


def test_instance_needs_processor():
    model, processor = tiny.llava()
    with pytest.raises(tomviz.ModelLoadError, match="needs its processor"):
        tomviz.load(model, device="cpu")
    assert isinstance(tomviz.load(model, processor=processor, device="cpu"), LoadedVLM)


def test_folder_without_torchvision(tmp_path):
    """A SmolVLM folder loads with an image-only processor (SmolVLM's video processor needs torchvision)."""
    model, processor = tiny.smolvlm()
    model.save_pretrained(tmp_path)
    processor.tokenizer.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_seq_len": processor.image_seq_len}))
    loaded = tomviz.load(str(tmp_path), device="cpu")
    assert isinstance(loaded, LoadedVLM) and loaded.adapter.family == "smolvlm"
    res = tomviz.inspect(loaded, (tiny.photo(), "what is in this image ?"), ratio=0.5, place="boundary", max_new_tokens=2)
    assert res.token_counts["llm_input"] == res.token_counts["visual"] // 2


def test_size_cap_depends_on_device(monkeypatch):
    monkeypatch.setattr(hub, "MAX_PARAMETERS", 400_000_000)
    monkeypatch.setattr(hub, "MAX_PARAMETERS_CUDA", 8_000_000_000)
    assert hub.max_parameters("cpu")[0] == 400_000_000
    assert hub.max_parameters("cuda") == (8_000_000_000, "TOMVIZ_MAX_PARAMETERS_CUDA")

    class Meta:
        parameter_count = {"F16": 7_000_000_000}

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", lambda repo: Meta())
    with pytest.raises(hub.ModelLoadError, match="up to 400M on CPU"):
        hub.check_size("llava-hf/llava-1.5-7b-hf", "cpu")
    hub.check_size("llava-hf/llava-1.5-7b-hf", "cuda")


def test_wrong_input_for_vlm():
    model, processor = tiny.llava()
    loaded = tomviz.load(model, processor=processor, device="cpu")
    with pytest.raises(ValueError, match=r"\(image, question\)"):
        tomviz.inspect(loaded, tiny.photo())
    with pytest.raises(ValueError, match="question is empty"):
        tomviz.inspect(loaded, (tiny.photo(), "  "))
    with pytest.raises(ValueError, match="unknown place"):
        tomviz.inspect(loaded, (tiny.photo(), "what ?"), place="decoder")
