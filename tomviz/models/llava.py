"""LLaVA (``LlavaForConditionalGeneration``: LLaVA-1.5 with a CLIP tower, or a SigLIP tower) and
LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``, below).

Vision tower: ``model.model.vision_tower`` (``clip`` or ``siglip`` image adapter); projector:
an MLP, one LLM token per patch (the CLS token is dropped with the "default" feature
strategy); LLM: ``model.model.language_model`` (Llama / Qwen2 layers). The features are
the hidden states of ``vision_feature_layer`` (LLaVA-1.5: the second last): layers after
it do not merge. Merged encoder tokens go to the LLM as they are (fewer tokens), no unmerge.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration, LlavaOnevisionForConditionalGeneration

from tomviz.models import clip, siglip  # noqa: F401  (register the vision towers' adapters)
from tomviz.models.vlm import VideoLayout, VLMAdapter, image_only, processor_files, register


def _features(model: nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    cfg = model.config
    out = model.model.get_image_features(
        tensors["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy, return_dict=True,
    )
    return torch.cat(list(out.pooler_output), dim=0)  # [images * n, D]


def _feature_layer(model: nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[T, N, Dv]`` the hidden states of ``vision_feature_layer`` per image, CLS first (before the CLS is
    dropped and before the projector), as ``LlavaModel.get_image_features`` selects them (transformers 5.24)."""
    layer = model.config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError("a method that runs before the projector needs one vision feature layer; this LLaVA "
                         f"concatenates the layers {list(layer)}")
    out = model.model.vision_tower(tensors["pixel_values"], output_hidden_states=True, return_dict=True)
    return out.hidden_states[layer]


def _project(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``[T, n, Dv]`` vision tokens → ``[T, n, D]`` the LLM's visual tokens (the multi-modal projector)."""
    return model.model.multi_modal_projector(hidden)


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
        model_types=frozenset({"llava"}),
        matches=lambda m: isinstance(m, LlavaForConditionalGeneration),
        vision_tower=lambda m: m.model.vision_tower,
        language_model=lambda m: m.model.language_model,
        image_features=_features,
        token_grid=lambda m, t: (_patch_grid(m, t), int(t["pixel_values"].shape[0])),
        patch_grid=_patch_grid,
        unmerge=False,
        encoder_layers_used=_layers_used,
        protected_dropped=lambda m: 1 if m.config.vision_feature_select_strategy == "default" else 0,
        pre_projector=_feature_layer,
        project=_project,
    )
)


def _onevision_features(model: nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    cfg = model.config
    out = model.model.get_image_features(
        tensors["pixel_values"], tensors["image_sizes"], vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy, vision_aspect_ratio=cfg.vision_aspect_ratio,
        batch_num_images=tensors.get("batch_num_images"), return_dict=True,
    )
    return torch.cat(list(out.pooler_output), dim=0)  # [V, D]: base view, then the anyres grid with a newline per row


def _newlines(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """``[V]`` bool: the ``image_newline`` tokens among the features ``[1, V, D]`` (copied in verbatim)."""
    newline = model.model.image_newline.to(features.dtype)
    return (features[0] == newline).all(-1)


def _onevision_video(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """``[1, T, 3, S, S]`` → ``[1, T * n + 1, D]``: every frame through the tower and projector, pooled 2x2 (bilinear,
    ``ceil(P / 2)`` per side), then one ``image_newline`` (transformers 5.24 ``get_video_features``)."""
    cfg = model.config
    return model.model.get_video_features(pixels, vision_feature_layer=cfg.vision_feature_layer,
                                          vision_feature_select_strategy=cfg.vision_feature_select_strategy).pooler_output


ONEVISION_VIDEO = VideoLayout(features=_onevision_video, token_grid=lambda m, grid: tuple(-(-side // 2) for side in grid),
                              pooling="bilinear", token="video", trailing_marker=True)


# LLaVA-OneVision: one image reaches the LLM as the base view (one tile's grid) followed by the anyres
# tiles stitched into one grid, cropped to the image's aspect ratio (unpad), bilinearly shrunk past
# anyres_max_9, with an image_newline token after each row. The tokens are therefore not equal tiles:
# grid-free methods only at the boundary (tome, dtome, random_prune; FastV in the LLM); the newline tokens stay
# as they are (text-like, never merged or pruned). The features are the hidden states of the encoder
# tiles before that stitching, so merging inside the encoder is refused.
LLAVA_ONEVISION = register(
    replace(
        LLAVA,
        family="llava_onevision",
        model_types=frozenset({"llava_onevision"}),
        processor_from_files=lambda folder, config: onevision_processor_from_files(folder),
        matches=lambda m: isinstance(m, LlavaOnevisionForConditionalGeneration),
        image_features=_onevision_features,
        token_grid=lambda m, t: (_patch_grid(m, t), int(t["pixel_values"].flatten(0, -4).shape[0])),
        layout_markers=_newlines,
        encoder_merging=("LLaVA-OneVision stitches its encoder tiles into one cropped, resized grid before the LLM; "
                         "merging inside its encoder is not supported: reduce at the boundary or in the LLM"),
        uniform_grid=False,
        pre_projector=None,  # the tiles are stitched, cropped and resized after the projector
        project=None,
        video=ONEVISION_VIDEO,
    )
)


def onevision_processor_from_files(folder: Path) -> Any:
    """An image-only ``LlavaOnevisionProcessor`` from a folder's files (no torchvision needed)."""
    import transformers as tf

    settings, template = processor_files(folder)
    options = {k: settings[k] for k in ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio") if k in settings}
    return image_only(tf.LlavaOnevisionProcessor)(image_processor=tf.AutoImageProcessor.from_pretrained(folder),
                                                  tokenizer=tf.AutoTokenizer.from_pretrained(folder), video_processor=None,
                                                  chat_template=template, **options)
