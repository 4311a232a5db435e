"""The CLIP image tower (``CLIPVisionModel``, also inside ``CLIPModel`` and ``CLIPForImageClassification``).

Only the image tower merges: merging inside CLIP's causal text tower is known to
ruin it. Blocks: ``vision.encoder.layers`` (pre-norm). Protected: CLS.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoTokenizer, CLIPModel, CLIPVisionModel

from tomviz.models.adapter import Adapter, load_auto, register
from tomviz.models.blocks import prenorm_block

_NAMES = ("layer_norm1", "self_attn", None, "layer_norm2", "mlp", None)


def _find(model: nn.Module) -> nn.Module | None:
    if isinstance(model, CLIPVisionModel):
        return model
    inner = getattr(model, "vision_model", None)
    return inner if isinstance(inner, CLIPVisionModel) else None


def _load(folder: Path, config: Any) -> tuple[nn.Module, Any]:
    """A CLIP folder: the whole ``CLIPModel`` (both towers) with its tokenizer; a vision-tower folder as it is."""
    if config.model_type == "clip":
        return CLIPModel.from_pretrained(folder, attn_implementation="sdpa"), AutoTokenizer.from_pretrained(folder)
    return load_auto(folder, config)


CLIP = register(
    Adapter(
        family="clip",
        modality="image",
        label="CLIP",
        model_types=frozenset({"clip", "clip_vision_model"}),
        load=_load,
        find_backbone=_find,
        blocks=lambda backbone: list(backbone.encoder.layers),
        num_protected=lambda backbone: 1,
        key_proj=lambda block: block.self_attn.k_proj,
        query_proj=lambda block: block.self_attn.q_proj,
        block_forward=partial(prenorm_block, names=_NAMES),
    )
)
