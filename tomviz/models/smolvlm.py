"""SmolVLM / Idefics3 (``SmolVLMForConditionalGeneration``, ``Idefics3ForConditionalGeneration``).

Vision tower: ``model.model.vision_model`` (SigLIP layout: the ``siglip`` image adapter);
connector: pixel shuffle by ``scale_factor`` then a linear map, so each tile of
``(S/p)²`` patches reaches the LLM as ``(S/p/scale)²`` tokens; LLM: ``model.model.text_model``
(Llama layers). The pixel shuffle needs the full patch grid: encoder merging is undone
after the encoder (``unmerge=True``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration

from tomviz.models import siglip  # noqa: F401  (registers the vision tower's adapter)
from tomviz.models.vlm import VideoLayout, VLMAdapter, image_only, processor_files, register


def _features(model: nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model.model.get_image_features(tensors["pixel_values"], tensors.get("pixel_attention_mask"), return_dict=True)
    return torch.cat(list(out.pooler_output), dim=0)  # [tiles * n, D]


def _patch_grid(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[int, int]:
    patch = model.config.vision_config.patch_size
    h, w = tensors["pixel_values"].shape[-2:]
    return int(h) // patch, int(w) // patch


_CROP_TOKEN = re.compile(r"<row_(\d+)_col_(\d+)>")


def _crop_grid(tokenizer: Any, tensors: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """``(rows, cols)`` of the crops of a split image, read from the prompt: the processor writes a
    ``<row_r_col_c>`` token before each crop's image tokens (transformers ``processing_smolvlm.py``
    ``_prompt_split_image``), then the global view's; None when the image was not split (or no tokenizer names
    the ids: a model wrapped without a processor)."""
    to_tokens = getattr(tokenizer, "convert_ids_to_tokens", None)
    if to_tokens is None:
        return None
    ids = torch.unique(tensors["input_ids"][0]).tolist()
    cells = [match for match in map(_CROP_TOKEN.fullmatch, to_tokens(ids)) if match]
    if not cells:
        return None
    return max(int(m[1]) for m in cells), max(int(m[2]) for m in cells)


def _token_grid(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[tuple[int, int], int]:
    rows, cols = _patch_grid(model, tensors)
    scale = model.config.scale_factor
    pixels = tensors["pixel_values"].flatten(0, -4)  # [tiles (+ padding tiles), 3, H, W]
    tiles = int((pixels.flatten(1) != 0).any(1).sum().clamp(min=1))
    return (rows // scale, cols // scale), tiles


def _video(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """``[1, T, 3, S, S]`` → ``[1, T * n, D]``: each frame one image tile (SmolVLM2 takes a clip's frames as images)."""
    return _features(model, {"pixel_values": pixels})[None]


SMOLVLM_VIDEO = VideoLayout(features=_video, token_grid=lambda m, grid: tuple(side // m.config.scale_factor for side in grid),
                            pooling="block", token="image", trailing_marker=False)


SMOLVLM = register(
    VLMAdapter(
        family="smolvlm",
        model_types=frozenset({"smolvlm", "idefics3"}),
        processor_from_files=lambda folder, config: _processor_fallback(folder, config),
        matches=lambda m: isinstance(m, (SmolVLMForConditionalGeneration, Idefics3ForConditionalGeneration)),
        vision_tower=lambda m: m.model.vision_model,
        language_model=lambda m: m.model.text_model,
        image_features=_features,
        token_grid=_token_grid,
        patch_grid=_patch_grid,
        crop_grid=_crop_grid,
        unmerge=True,
        nested_images=True,
        video=SMOLVLM_VIDEO,
    )
)


def processor_without_video(image_processor, tokenizer, image_seq_len: int, chat_template: str | None = None):
    """A ``SmolVLMProcessor`` with no video processor. transformers builds SmolVLM's video processor
    only with torchvision installed; images need none, so tomviz does not require torchvision."""
    from transformers import SmolVLMProcessor

    return image_only(SmolVLMProcessor)(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                        image_seq_len=image_seq_len, chat_template=chat_template)


def processor_from_files(folder: Path, config: Any) -> Any:
    """An image-only SmolVLM processor built from a folder's files (``config``: its transformers config)."""
    import transformers as tf

    settings, template = processor_files(folder)
    vision = config.vision_config
    seq_len = settings.get("image_seq_len") or (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2
    return processor_without_video(tf.AutoImageProcessor.from_pretrained(folder), tf.AutoTokenizer.from_pretrained(folder),
                                   int(seq_len), template)


def _processor_fallback(folder: Path, config: Any) -> Any:
    """SmolVLM folders get an image-only processor from their files; Idefics3 folders none (None)."""
    return processor_from_files(folder, config) if config.model_type == "smolvlm" else None
