"""LLaVA (``LlavaForConditionalGeneration``: LLaVA-1.5 with a CLIP tower, or a SigLIP tower).

Vision tower: ``model.model.vision_tower`` (``clip`` or ``siglip`` image adapter); projector:
an MLP, one LLM token per patch (the CLS token is dropped with the "default" feature
strategy); LLM: ``model.model.language_model`` (Llama / Qwen2 layers). The features are
the hidden states of ``vision_feature_layer`` (LLaVA-1.5: the second last): layers after
it do not merge. Merged encoder tokens go to the LLM as they are (fewer tokens), no unmerge.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from tomviz.models import clip, siglip  # noqa: F401  (register the vision towers' adapters)
from tomviz.models.vlm import VLMAdapter, register


def _features(model: nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    cfg = model.config
    out = model.model.get_image_features(
        tensors["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy, return_dict=True,
    )
    return torch.cat(list(out.pooler_output), dim=0)  # [images * n, D]


def _patch_grid(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[int, int]:
    patch = model.config.vision_config.patch_size
    h, w = tensors["pixel_values"].shape[-2:]
    return int(h) // patch, int(w) // patch


def _layers_used(model: nn.Module) -> int:
    layer = model.config.vision_feature_layer
    if not isinstance(layer, int):
        return 0  # several feature layers: merging must not change any of them (not supported: merge all)
    num_layers = model.config.vision_config.num_hidden_layers
    return layer % (num_layers + 1)  # hidden_states[h] is the output of layer h-1


LLAVA = register(
    VLMAdapter(
        family="llava",
        matches=lambda m: isinstance(m, LlavaForConditionalGeneration),
        vision_tower=lambda m: m.model.vision_tower,
        language_model=lambda m: m.model.language_model,
        image_features=_features,
        token_grid=lambda m, t: (_patch_grid(m, t), int(t["pixel_values"].shape[0])),
        patch_grid=_patch_grid,
        unmerge=False,
        encoder_layers_used=_layers_used,
        protected_dropped=lambda m: 1 if m.config.vision_feature_select_strategy == "default" else 0,
    )
)
