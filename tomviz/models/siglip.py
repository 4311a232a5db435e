"""SigLIP-style vision towers: ``SiglipVisionModel`` (also inside ``SiglipModel``) and the encoders inside SmolVLM / Idefics3.

Blocks: ``encoder.layers`` (pre-norm, the same layout as CLIP: ``layer_norm1 → self_attn →
layer_norm2 → mlp``). SigLIP has no CLS token: nothing is protected. Methods that read
the CLS attention read the first patch's attention here (there is no better query).
Loaded only as the vision tower of a VLM (no ``model_types``).
"""
from __future__ import annotations

from functools import partial

from torch import nn
from transformers import Idefics3VisionTransformer, SiglipVisionModel, SmolVLMVisionTransformer

from tomviz.models.adapter import Adapter, register
from tomviz.models.blocks import prenorm_block

_NAMES = ("layer_norm1", "self_attn", None, "layer_norm2", "mlp", None)
TOWERS = (SiglipVisionModel, SmolVLMVisionTransformer, Idefics3VisionTransformer)


def _find(model: nn.Module) -> nn.Module | None:
    if isinstance(model, TOWERS):
        return model
    inner = getattr(model, "vision_model", None)  # SiglipModel, SiglipForImageClassification
    return inner if isinstance(inner, SiglipVisionModel) else None


SIGLIP = register(
    Adapter(
        family="siglip",
        modality="image",
        find_backbone=_find,
        blocks=lambda backbone: list(backbone.encoder.layers),
        num_protected=lambda backbone: 0,
        key_proj=lambda block: block.self_attn.k_proj,
        query_proj=lambda block: block.self_attn.q_proj,
        block_forward=partial(prenorm_block, names=_NAMES),
    )
)
