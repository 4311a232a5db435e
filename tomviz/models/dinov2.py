"""DINOv2, with and without registers (``Dinov2Model``, ``Dinov2WithRegistersModel`` and heads).

Blocks: ``backbone.encoder.layer`` (pre-norm with layer scale). Protected: CLS
and the register tokens that follow it.
"""
from __future__ import annotations

from functools import partial

from torch import nn
from transformers import Dinov2Model, Dinov2WithRegistersModel

from tomviz.models.patching import Adapter, prenorm_block, register

_NAMES = ("norm1", "attention", "layer_scale1", "norm2", "mlp", "layer_scale2")


def _find(model: nn.Module) -> nn.Module | None:
    for candidate in (model, getattr(model, "dinov2", None), getattr(model, "dinov2_with_registers", None)):
        if isinstance(candidate, (Dinov2Model, Dinov2WithRegistersModel)):
            return candidate
    return None


DINOV2 = register(
    Adapter(
        family="dinov2",
        modality="image",
        find_backbone=_find,
        blocks=lambda backbone: list(backbone.encoder.layer),
        num_protected=lambda backbone: 1 + int(getattr(backbone.config, "num_register_tokens", 0) or 0),
        key_proj=lambda block: block.attention.k_proj,
        query_proj=lambda block: block.attention.q_proj,
        block_forward=partial(prenorm_block, names=_NAMES),
    )
)
