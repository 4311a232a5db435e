"""The CLIP image tower (``CLIPVisionModel``, also inside ``CLIPModel`` and ``CLIPForImageClassification``).

Only the image tower merges: merging inside CLIP's causal text tower is known to
ruin it. Blocks: ``vision.encoder.layers`` (pre-norm). Protected: CLS.
"""
from __future__ import annotations

from functools import partial

from torch import nn
from transformers import CLIPVisionModel

from tomviz.models.patching import Adapter, prenorm_block, register

_NAMES = ("layer_norm1", "self_attn", None, "layer_norm2", "mlp", None)


def _find(model: nn.Module) -> nn.Module | None:
    if isinstance(model, CLIPVisionModel):
        return model
    inner = getattr(model, "vision_model", None)
    return inner if isinstance(inner, CLIPVisionModel) else None


CLIP = register(
    Adapter(
        family="clip",
        modality="image",
        find_backbone=_find,
        blocks=lambda backbone: list(backbone.encoder.layers),
        num_protected=lambda backbone: 1,
        key_proj=lambda block: block.self_attn.k_proj,
        query_proj=lambda block: block.self_attn.q_proj,
        block_forward=partial(prenorm_block, names=_NAMES),
    )
)
