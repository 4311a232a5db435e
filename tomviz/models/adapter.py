"""What one architecture family says about itself: an :class:`Adapter`, and the registry of them.

A model family is one adapter file (``tomviz/models/{vit,dinov2,clip,siglip,bert}.py``) plus one
:func:`register` call. Everything that differs by family is asked of the adapter: where merging
happens (blocks, protected tokens, projections, the block forward), how a folder of its
``model_type`` loads (:mod:`tomviz.models.loading`), its widths for the FLOP count
(:mod:`tomviz.speed`), the final embedding that fidelity compares (:mod:`tomviz.fidelity`), its
longest text and the hooks that let its head pool merged tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn


class UnsupportedModelError(TypeError):
    """The model's architecture has no tomviz adapter."""


def config_widths(config: Any) -> tuple[int, int]:
    """``(hidden C, MLP width M)`` from a transformers config (ViT/DINOv2/BERT/CLIP names)."""
    hidden = int(config.hidden_size)
    mlp = getattr(config, "intermediate_size", None)
    if mlp is None:
        mlp = int(round(hidden * float(getattr(config, "mlp_ratio", 4))))
    return hidden, int(mlp)


def _logits(outputs: Any) -> tuple[np.ndarray, str] | None:
    logits = getattr(outputs, "logits", None)
    return None if logits is None else (logits.float().cpu().numpy(), "logits")


def image_embeddings(outputs: Any, weights: torch.Tensor | np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """``[B, C]`` and its name: a classifier's logits, else ``image_embeds`` (CLIP), else ``pooler_output``,
    else the CLS token of ``last_hidden_state`` (``weights`` unused)."""
    found = _logits(outputs)
    if found is not None:
        return found
    for name in ("image_embeds", "pooler_output"):
        value = getattr(outputs, name, None)
        if value is not None:
            return value.float().cpu().numpy(), name.replace("_", " ")
    return outputs.last_hidden_state[:, 0].float().cpu().numpy(), "CLS token"


def text_embeddings(outputs: Any, weights: torch.Tensor | np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """``[B, C]`` and its name: a classifier's logits, else the weighted mean of the final tokens (= the mean
    over input tokens, as sentence encoders pool). ``weights`` ``[N_L]`` (element 0's) or ``[B, N_L]``: the
    final tokens' sizes (None = all ones)."""
    found = _logits(outputs)
    if found is not None:
        return found
    hidden = outputs.last_hidden_state.float().cpu().numpy()  # [B, N_L, C]
    if weights is None:
        w = np.ones(hidden.shape[:2])
    else:
        w = np.asarray(torch.as_tensor(weights).float().cpu().numpy(), dtype=np.float64)
        w = np.broadcast_to(w.reshape(-1, w.shape[-1]), hidden.shape[:2])
    return (w[..., None] * hidden).sum(1) / w.sum(1, keepdims=True), "mean-pooled tokens"


EMBEDDINGS = {"image": image_embeddings, "text": text_embeddings}  # the default final embedding per modality


def auto_model(folder: Path, config: Any) -> nn.Module:
    """A folder's model with SDPA attention: its image-classification head when it has one, else the base model."""
    import transformers as tf

    archs = " ".join(getattr(config, "architectures", None) or [])
    auto = tf.AutoModelForImageClassification if "ImageClassification" in archs else tf.AutoModel
    return auto.from_pretrained(folder, attn_implementation="sdpa")


def load_auto(folder: Path, config: Any) -> tuple[nn.Module, Any]:
    """(model, None): an image model's folder (:func:`auto_model`)."""
    return auto_model(folder, config), None


def load_with_tokenizer(folder: Path, config: Any) -> tuple[nn.Module, Any]:
    """(model, tokenizer): a text model's folder."""
    import transformers as tf

    return auto_model(folder, config), tf.AutoTokenizer.from_pretrained(folder)


def position_limit(backbone: nn.Module) -> int:
    """The longest input in tokens the position embeddings allow (``max_position_embeddings``, else 512)."""
    return int(getattr(backbone.config, "max_position_embeddings", 512))


@dataclass(frozen=True)
class Adapter:
    """One architecture family: where merging happens, and what the rest of tomviz asks of the family."""

    family: str  # "vit", "deit", "dinov2", "clip", "siglip", "bert"
    modality: str  # "image" or "text"
    find_backbone: Callable[[nn.Module], nn.Module | None]  # the encoder-owning module, or None if not this family
    blocks: Callable[[nn.Module], list[nn.Module]]  # the transformer blocks of the backbone
    num_protected: Callable[[nn.Module], int]  # leading tokens that never merge (CLS, distillation, registers)
    key_proj: Callable[[nn.Module], nn.Module]  # block → its key projection (nn.Linear)
    query_proj: Callable[[nn.Module], nn.Module]  # block → its query projection
    block_forward: Callable[..., torch.Tensor]  # (block, state, index, num_heads, hidden, mask, **kw) → hidden
    # Hooks that make a head pool merged tokens by size: (root model, backbone) → hook handles (default: none).
    head_hooks: Callable[[nn.Module, nn.Module], list[Any]] = lambda model, backbone: []
    label: str = ""  # how messages name the family ("DINOv2"); "" = not loadable from a folder on its own
    model_types: frozenset[str] = frozenset()  # transformers ``config.model_type`` values this adapter loads
    load: Callable[[Path, Any], tuple[nn.Module, Any]] = load_auto  # (folder, config) → (model, tokenizer or None)
    widths: Callable[[nn.Module], tuple[int, int]] = lambda backbone: config_widths(backbone.config)  # (C, M)
    # (outputs, final token weights or None) → ([B, C], name); None: the modality's default (EMBEDDINGS)
    embedding: Callable[[Any, Any], tuple[np.ndarray, str]] | None = None
    max_positions: Callable[[nn.Module], int] = position_limit  # backbone → longest text input (text models)

    def final_embeddings(self, outputs: Any, weights: torch.Tensor | np.ndarray | None = None) -> tuple[np.ndarray, str]:
        """``[B, C]`` embeddings that fidelity compares, and their name (see :data:`EMBEDDINGS`)."""
        return (self.embedding or EMBEDDINGS[self.modality])(outputs, weights)


ADAPTERS: list[Adapter] = []


def register(adapter: Adapter) -> Adapter:
    ADAPTERS.append(adapter)
    return adapter


def find_adapter(model: nn.Module) -> tuple[Adapter, nn.Module]:
    """The adapter of ``model``'s family and its backbone; :class:`UnsupportedModelError` when none fits."""
    for adapter in ADAPTERS:
        backbone = adapter.find_backbone(model)
        if backbone is not None:
            return adapter, backbone
    supported = ", ".join(sorted({a.family for a in ADAPTERS}))
    raise UnsupportedModelError(
        f"tomviz cannot merge tokens in {type(model).__name__}: supported architecture families are {supported}"
    )


def adapter_for_type(model_type: str) -> Adapter | None:
    """The adapter that loads folders of this transformers ``model_type``, or None."""
    return next((a for a in ADAPTERS if model_type in a.model_types), None)


def supported_labels() -> str:
    """The loadable families for messages: ``"ViT, DeiT, DINOv2, CLIP and BERT-family"``."""
    labels = [a.label for a in ADAPTERS if a.label and a.model_types]
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"
