"""ViT and DeiT (transformers ``ViTModel``/``DeiTModel`` and their heads).

Blocks: ``backbone.layers`` of ``ViTLayer``/``DeiTLayer`` (pre-norm). Protected:
CLS, plus DeiT's distillation token when the embeddings carry one.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from torch import nn
from transformers import DeiTForImageClassificationWithTeacher, DeiTModel, ViTModel

from tomviz.models.adapter import Adapter, auto_model, register
from tomviz.models.blocks import prenorm_block

_NAMES = ("layernorm_before", "attention", None, "layernorm_after", "mlp", None)


def _find(model: nn.Module, cls: type) -> nn.Module | None:
    if isinstance(model, cls):
        return model
    for name in ("vit", "deit"):
        inner = getattr(model, name, None)
        if isinstance(inner, cls):
            return inner
    return None


def _deit_protected(backbone: nn.Module) -> int:
    return 2 if getattr(backbone.embeddings, "distillation_token", None) is not None else 1


def _load_deit(folder: Path, config: Any) -> tuple[nn.Module, None]:
    """A DeiT folder: the distilled classifier (class + distillation heads) when it has one, else as ViT."""
    if "WithTeacher" in " ".join(getattr(config, "architectures", None) or []):
        return DeiTForImageClassificationWithTeacher.from_pretrained(folder, attn_implementation="sdpa"), None
    return auto_model(folder, config), None


VIT = register(
    Adapter(
        family="vit",
        modality="image",
        label="ViT",
        model_types=frozenset({"vit"}),
        find_backbone=partial(_find, cls=ViTModel),
        blocks=lambda backbone: list(backbone.layers),
        num_protected=lambda backbone: 1,
        key_proj=lambda block: block.attention.k_proj,
        query_proj=lambda block: block.attention.q_proj,
        block_forward=partial(prenorm_block, names=_NAMES),
    )
)

DEIT = register(
    Adapter(
        family="deit",
        modality="image",
        label="DeiT",
        model_types=frozenset({"deit"}),
        load=_load_deit,
        find_backbone=partial(_find, cls=DeiTModel),
        blocks=lambda backbone: list(backbone.layers),
        num_protected=_deit_protected,
        key_proj=lambda block: block.attention.k_proj,
        query_proj=lambda block: block.attention.q_proj,
        block_forward=partial(prenorm_block, names=_NAMES),
    )
)
