"""Vision-language models: what an adapter of a VLM family says, and a loaded VLM.

A :class:`VLMAdapter` (one per family: ``tomviz/models/smolvlm.py``, ``tomviz/models/llava.py``)
says only *where* things are: the vision tower (merged by the image adapters of
``tomviz/models/patching.py``, e.g. ``siglip``/``clip``), the language model's decoder
(patched by ``tomviz/models/llm.py``), how pixels become the LLM's visual tokens, and
the grid those tokens form. The flow of a call lives in ``tomviz/vlm/`` (one module per stage).

Merging inside the encoder uses the ordinary per-call :class:`~tomviz.merge.engine.MergeState`,
here as :class:`EncoderState`, which always tracks each patch's group so that a
connector that needs the full patch grid (SmolVLM's pixel shuffle) gets merged
tokens copied back to their patches (merge, compute, unmerge).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from tomviz.merge.engine import MergeState, attention_probabilities, current_state
from tomviz.models import llm, patching

_HOOKS = "_tomviz_vlm_hooks"


@dataclass(frozen=True)
class VideoLayout:
    """How a VLM family takes a clip: its frames' pixels → the visual tokens of every frame, frame-major."""

    # (model, pixels [1, T, 3, S, S]) → [1, T * n (+ 1 marker), D] the frames' tokens for the LLM
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    # (model, (rows, cols) of a frame's patch grid) → (rows, cols) of a frame's LLM tokens
    token_grid: Callable[[nn.Module, tuple[int, int]], tuple[int, int]]
    pooling: str  # how patches become a frame's tokens: "bilinear" (interpolation) | "block" (pixel shuffle blocks)
    token: str  # the prompt's placeholder for the frames' tokens: "video" (one block) | "image" (one per frame)
    trailing_marker: bool  # one layout token (OneVision's newline) after the last frame, kept like text


@dataclass(frozen=True)
class VLMAdapter:
    """Where things are in one VLM family."""

    family: str  # "smolvlm", "llava"
    matches: Callable[[nn.Module], bool]
    vision_tower: Callable[[nn.Module], nn.Module]  # the module the image adapter patches
    language_model: Callable[[nn.Module], nn.Module]  # the decoder: ``.layers``, ``.embed_tokens``
    # (model, processor tensors) → [V', D] the visual tokens the LLM receives, in sequence order
    image_features: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    # (model, processor tensors) → ((rows, cols) of one tile's visual-token grid, number of tiles)
    token_grid: Callable[[nn.Module, dict[str, torch.Tensor]], tuple[tuple[int, int], int]]
    # (model, processor tensors) → ((rows, cols) of one tile's patch grid in the encoder)
    patch_grid: Callable[[nn.Module, dict[str, torch.Tensor]], tuple[int, int]]
    unmerge: bool  # the connector needs every patch: unmerge after the encoder
    # (vision tower) → the module after whose output merged tokens are copied back to their patches (with unmerge)
    unmerge_after: Callable[[nn.Module], nn.Module | None] = lambda vision: getattr(vision, "post_layernorm", None)
    encoder_layers_used: Callable[[nn.Module], int] = lambda model: 0  # layers whose output reaches the features (0 = all)
    protected_dropped: Callable[[nn.Module], int] = lambda model: 0  # leading encoder tokens not passed on (CLS)
    nested_images: bool = False  # the processor wants images as [[image]] (one list per prompt)
    # (model, features [1, V, D]) → [V] bool: image tokens that only mark the layout (LLaVA-OneVision's
    # image_newline), passed to the LLM as they are and not counted as visual tokens; None: there are none
    layout_markers: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    encoder_merging: str = ""  # why merging inside the encoder is refused ("" = supported)
    encoder_attention: str = ""  # why the encoder's attention is not recorded for methods that read it ("" = it is)
    # (model, processor tensors) → [N0] the encoder's sequence index of each patch, row-major, for the encoder
    # trace; None: the encoder's sequence is row-major already
    patch_order: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None
    uniform_grid: bool = True  # the visual tokens form num_tiles equal grids (False: grid-free methods only)
    model_types: frozenset[str] = frozenset()  # transformers ``config.model_type`` values of this family's folders
    # (folder, config) → an image-only processor built from the files when AutoProcessor fails (it needs
    # torchvision for videos), or None: the error stands
    processor_from_files: Callable[[Path, Any], Any] = lambda folder, config: None
    # a boundary method that runs before the projector (VisionZip) reads the feature layer with its CLS token:
    # (model, processor tensors) → [T, N, Dv] that layer's hidden states per tile (CLS first), and
    # (model, [T, n, Dv]) → [T, n, D] the projector; None: the family has no such place (no CLS, or a connector
    # that needs every patch)
    pre_projector: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None
    project: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    # (model, processor tensors) → [3, 1, L] the LLM's position ids of the whole prompt when the family numbers its
    # tokens itself (Qwen2-VL's M-RoPE); the reduced sequence keeps those of the tokens it keeps. None: 0..L'-1
    positions: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None
    video: VideoLayout | None = None  # how the family takes a clip (None: no video)
    # (tokenizer, tensors) → (rows, cols) of the crops a split image was cut into (row-major, then one global view
    # of the whole image: SmolVLM / Idefics3), or None when it was not split; None: the family does not split
    crop_grid: Callable[[Any, dict[str, torch.Tensor]], tuple[int, int] | None] | None = None


VLM_ADAPTERS: list[VLMAdapter] = []


def register(adapter: VLMAdapter) -> VLMAdapter:
    VLM_ADAPTERS.append(adapter)
    return adapter


def find_vlm_adapter(model: Any) -> VLMAdapter | None:
    for adapter in VLM_ADAPTERS:
        if isinstance(model, nn.Module) and adapter.matches(model):
            return adapter
    return None


def vlm_adapter_for_type(model_type: str) -> VLMAdapter | None:
    """The VLM adapter whose folders have this transformers ``model_type``, or None."""
    return next((a for a in VLM_ADAPTERS if model_type in a.model_types), None)


def processor_files(folder: Path) -> tuple[dict[str, Any], str | None]:
    """A processor folder's ``processor_config.json`` (``{}`` if absent) and chat template (None if absent)."""
    settings = json.loads((folder / "processor_config.json").read_text()) if (folder / "processor_config.json").exists() else {}
    template = None
    if (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text()
    elif (folder / "chat_template.json").exists():
        template = json.loads((folder / "chat_template.json").read_text()).get("chat_template")
    return settings, template


def image_only(processor_class: type) -> type:
    """A subclass of a transformers VLM processor that accepts ``video_processor=None``. transformers
    builds video processors only with torchvision installed; images need none, so tomviz does not
    require torchvision."""

    class ImageOnlyProcessor(processor_class):
        def check_argument_for_proper_class(self, name, argument):
            if name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(name, argument)

    ImageOnlyProcessor.__name__ = f"ImageOnly{processor_class.__name__}"
    return ImageOnlyProcessor


@dataclass(frozen=True)
class ClsView:
    """What one encoder layer's attention shows of its CLS token (VisionZip's inputs)."""

    cls_attention: torch.Tensor  # [B, H, N] float32: the CLS row of the attention probabilities, per head
    keys: torch.Tensor  # [B, H, N, d]: the layer's keys, per head


class EncoderState(MergeState):
    """A :class:`MergeState` that always tracks each input token's group (``source``), optionally
    copies merged tokens back to their patches after the encoder (``unmerge``), records the
    attention each token receives in ``attention_layers`` (``received[layer]``: ``[B, N]``, mean over
    heads and queries) and the CLS row and keys of ``cls_layers`` (``cls_views[layer]``: :class:`ClsView`);
    both recomputed from the keys and queries the blocks hand over, so SDPA stays the kernel."""

    def __init__(self, config: Any, num_protected: int, num_layers: int, meta: dict[str, Any] | None = None,
                 unmerge: bool = False, attention_layers: tuple[int, ...] = (), cls_layers: tuple[int, ...] = ()):
        super().__init__(config, num_protected, num_layers, meta)
        self.unmerge = unmerge
        self.attention_layers = tuple(attention_layers)
        self.cls_layers = tuple(cls_layers)
        self.received: dict[int, torch.Tensor] = {}  # layer -> [B, N]
        self.cls_views: dict[int, ClsView] = {}

    @property
    def wants_query(self) -> bool:
        return super().wants_query or bool(self.attention_layers) or bool(self.cls_layers)

    def passthrough(self, layer: int) -> bool:
        return super().passthrough(layer) and layer not in self.attention_layers and layer not in self.cls_layers

    def after_attention(self, layer: int, x: torch.Tensor, keys: torch.Tensor, query: torch.Tensor | None,
                        num_heads: int, segments: torch.Tensor | None = None) -> torch.Tensor:
        if layer in self.attention_layers and query is not None:
            self.received[layer] = received_attention(query, keys, num_heads, self._bias)
        if layer in self.cls_layers and query is not None:
            batch, num_tokens, width = keys.shape
            cls_rows = attention_probabilities(query[:, :1], keys, num_heads, self._bias)[:, :, 0]  # [B, H, N]
            per_head = keys.view(batch, num_tokens, num_heads, width // num_heads).transpose(1, 2)  # [B, H, N, d]
            self.cls_views[layer] = ClsView(cls_attention=cls_rows, keys=per_head)
        return super().after_attention(layer, x, keys, query, num_heads, segments)

    def begin(self, x: torch.Tensor, incoming: torch.Tensor | None) -> None:
        if self._started:
            return
        super().begin(x, incoming)
        if self.source is None:
            self.source = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], x.shape[1])


def received_attention(query: torch.Tensor, keys: torch.Tensor, num_heads: int,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """``[B, N]``: the attention each token receives, mean over heads and queries. query, keys: ``[B, N, H*d]``;
    bias: ``[B, 1, 1, N]`` or None. One tile at a time, so only one ``[H, N, N]`` map is held at once."""
    rows = []
    for b in range(query.shape[0]):
        tile_bias = None if bias is None else bias[b:b + 1]
        probs = attention_probabilities(query[b:b + 1], keys[b:b + 1], num_heads, tile_bias)  # [1, H, N, N]
        rows.append(probs[0].mean(0).mean(0))  # [N]
    return torch.stack(rows)


def unmerge_tokens(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Copy each merged token to the input tokens of its group: ``[B, N, C]`` → ``[B, N0, C]``
    (source ``[B, N0]``; pruned inputs, -1, get zeros)."""
    index = source.clamp(min=0).unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return x.gather(1, index).masked_fill((source < 0).unsqueeze(-1), 0.0)


def _unmerge_hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
    """``[B, N, C]`` (or a flat tower's ``[N, C]``, one sequence) → the same with every patch back."""
    state = current_state()
    if isinstance(state, EncoderState) and state.unmerge and state.sizes is not None:
        if output.dim() == 2:
            return unmerge_tokens(output[None], state.source)[0]
        return unmerge_tokens(output, state.source)
    return None


@dataclass
class LoadedVLM:
    """A transformers VLM with its processor."""

    name: str
    model: nn.Module
    adapter: VLMAdapter
    processor: Any

    modality = "image+text"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vision(self) -> nn.Module:
        return self.adapter.vision_tower(self.model)

    @property
    def language_model(self) -> nn.Module:
        return self.adapter.language_model(self.model)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def max_length(self) -> int:
        text = getattr(self.model.config, "text_config", self.model.config)
        return int(getattr(text, "max_position_embeddings", 2048))


def prepare_model(model: nn.Module, adapter: VLMAdapter) -> None:
    """Patch the vision tower (image adapter) and the LLM's decoder layers; idempotent, under ``patching.PATCH_LOCK``.
    Without an active state the model computes exactly what it computed before."""
    vision = adapter.vision_tower(model)
    with patching.PATCH_LOCK:
        patching.apply(vision)
        llm.apply(adapter.language_model(model))
        if adapter.unmerge and not hasattr(model, _HOOKS):
            post = adapter.unmerge_after(vision)
            if post is None:
                raise patching.UnsupportedModelError(f"{adapter.family}: the vision tower has no module to unmerge after")
            setattr(model, _HOOKS, [post.register_forward_hook(_unmerge_hook)])


def wrap(name: str, model: nn.Module, processor: Any) -> LoadedVLM:
    adapter = find_vlm_adapter(model)
    if adapter is None:
        raise patching.UnsupportedModelError(f"{type(model).__name__} is not a supported vision-language model")
    if processor is None:
        raise ValueError(f"{name}: a vision-language model needs its processor (tomviz.load(model, processor=...))")
    prepare_model(model, adapter)
    return LoadedVLM(name=name, model=model, adapter=adapter, processor=processor)


def encoder_state(loaded: LoadedVLM, config: Any, meta: dict[str, Any], unmerge: bool,
                  attention_layers: tuple[int, ...] = (), cls_layers: tuple[int, ...] = ()) -> EncoderState:
    """The per-call merge state of the vision tower (see :class:`EncoderState`)."""
    info = patching.apply(loaded.vision)
    return EncoderState(
        config, num_protected=info.adapter.num_protected(info.backbone), num_layers=len(info.blocks),
        meta={"family": info.adapter.family, "modality": "image", **meta}, unmerge=unmerge,
        attention_layers=attention_layers, cls_layers=cls_layers,
    )
