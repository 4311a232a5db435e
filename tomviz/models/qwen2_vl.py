"""Qwen2-VL (``Qwen2VLForConditionalGeneration``; Wang et al. 2024, arXiv 2409.12191) and Qwen2.5-VL
(``Qwen2_5_VLForConditionalGeneration``; Bai et al. 2025, arXiv 2502.13923), stock transformers 5.24
(``models/qwen2_vl/modeling_qwen2_vl.py``, ``models/qwen2_5_vl/modeling_qwen2_5_vl.py``), no remote code.

Vision tower: ``model.model.visual``, a ViT over ``patch_size`` px patches of the image as the processor resized it
(any aspect ratio, ``grid_thw = (1, h, w)`` patches per image) that runs on one flat ``[h*w, C]`` sequence; its
merger joins each ``2 x 2`` block of patches into one LLM token, so an image reaches the LLM as one
``(h/2, w/2)`` grid, row-major (Qwen2.5-VL computes in window order and restores that order after the merger).
LLM: ``model.model.language_model`` (Qwen2 layers) with multimodal RoPE: every token has three position ids
(time, row, column), computed by ``Qwen2VLModel.get_rope_index`` from the prompt and ``image_grid_thw``. A reduced
sequence keeps each kept token's original three ids (:attr:`~tomviz.models.vlm.VLMAdapter.positions`); the text
after the prompt counts on from the largest of them, given explicitly on every call, so the model's own
``rope_deltas`` (kept on the model between calls by transformers) is never read.

Reduction at every place: inside the vision encoder (``tomviz/models/qwen2_vl_vision.py``: merge, compute,
unmerge before the 2 x 2 merger, merged tokens at their destination's rotary position, merging within images and,
in Qwen2.5-VL, within attention windows), at the boundary (the merged tokens) and inside the LLM (FastV, AIM).
Methods that read the encoder's attention are refused (tomviz does not recompute its windowed, rotated attention).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)

from tomviz.models.qwen2_vl_vision import ATTENTION_NOT_RECORDED, patch_order  # (registers the tower's image adapter)
from tomviz.models.vlm import VLMAdapter, image_only, processor_files, register


def _grid(tensors: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """``(t, h, w)`` patches of the request's one image (``image_grid_thw`` ``[1, 3]``)."""
    grids = tensors["image_grid_thw"]
    if grids.shape[0] != 1:
        raise ValueError(f"one image per request, got {grids.shape[0]}")
    t, h, w = (int(v) for v in grids[0])
    return t, h, w


def _features(model: nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[V, D]`` the merged visual tokens (after the vision merger), row-major over the ``(h/2, w/2)`` grid."""
    out = model.model.get_image_features(tensors["pixel_values"], tensors["image_grid_thw"], return_dict=True)
    return torch.cat(list(out.pooler_output), dim=0)


def _patch_grid(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[int, int]:
    _, h, w = _grid(tensors)
    return h, w


def _token_grid(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[tuple[int, int], int]:
    """``((h/m, w/m), t)``: the merged grid of each temporal slice (one for an image)."""
    t, h, w = _grid(tensors)
    merge = model.config.vision_config.spatial_merge_size
    return (h // merge, w // merge), t


def rope_positions(model: nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[3, 1, L]`` the multimodal RoPE position ids (time, row, column) of the whole prompt, from
    ``get_rope_index`` (which reads the model's config only and keeps nothing on the model)."""
    positions, _ = model.model.get_rope_index(
        tensors["input_ids"], mm_token_type_ids=tensors["mm_token_type_ids"], image_grid_thw=tensors["image_grid_thw"],
        attention_mask=tensors.get("attention_mask"),
    )
    return positions


def processor_from_files(folder: Path, config: Any) -> Any:
    """An image-only Qwen2-VL / Qwen2.5-VL processor from a folder's files (no torchvision needed for images)."""
    import transformers as tf

    _, template = processor_files(folder)
    processor_class = tf.Qwen2_5_VLProcessor if config.model_type == "qwen2_5_vl" else tf.Qwen2VLProcessor
    return image_only(processor_class)(image_processor=tf.AutoImageProcessor.from_pretrained(folder),
                                       tokenizer=tf.AutoTokenizer.from_pretrained(folder), video_processor=None,
                                       chat_template=template)


QWEN2_VL = register(
    VLMAdapter(
        family="qwen2_vl",
        model_types=frozenset({"qwen2_vl", "qwen2_5_vl"}),
        matches=lambda m: isinstance(m, (Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration)),
        vision_tower=lambda m: m.model.visual,
        language_model=lambda m: m.model.language_model,
        image_features=_features,
        token_grid=_token_grid,
        patch_grid=_patch_grid,
        unmerge=True,
        unmerge_after=lambda vision: vision.blocks[-1],  # before the 2 x 2 merger, which needs every patch
        encoder_attention=ATTENTION_NOT_RECORDED,
        patch_order=lambda model, tensors: patch_order(model.model.visual, tensors["image_grid_thw"]),
        processor_from_files=processor_from_files,
        positions=rope_positions,
    )
)
