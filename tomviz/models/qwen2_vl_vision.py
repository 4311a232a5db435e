"""The vision tower of Qwen2-VL and Qwen2.5-VL with token merging inside (merge, compute, unmerge).

Stock transformers 5.24 (``models/qwen2_vl/modeling_qwen2_vl.py`` ``Qwen2VisionTransformerPretrainedModel``,
``models/qwen2_5_vl/modeling_qwen2_5_vl.py`` ``Qwen2_5_VisionTransformerPretrainedModel``), no remote code. The
tower runs on one flat ``[N, C]`` sequence of patches (all images of a call; tomviz sends one), in blocks of
2 x 2 patches that its ``PatchMerger`` later joins into one LLM token each. Every block takes:

- ``cu_seqlens``: where attention segments start and end. Qwen2-VL: one segment per image (full attention within
  the image). Qwen2.5-VL: windows of ``window_size`` px (112 px = 8 x 8 patches of 14 px) in every block except
  ``fullatt_block_indexes`` (7, 15, 23, 31), which attend over the whole image; the tower reorders the patches
  window by window before the first block (``window_index``) and restores the order after the merger.
- ``position_embeddings``: the 2-D rotary ``(cos, sin)`` ``[N, head_dim]`` of every patch's (row, column),
  applied to the queries and keys of every block.

Design. The engine (:mod:`tomviz.merge.engine`) merges after each block's attention as in every other encoder,
and the tower is handed back every patch before its merger (merge, compute, unmerge, as for SmolVLM's pixel
shuffle): a forward hook on the last block copies each merged token to its patches (``unmerge_after`` of the VLM
adapter), so the 2 x 2 merger sees the full grid and the LLM receives as many tokens as without merging.

- Positions: a merged token keeps the rotary position of the token it stands at, its destination (ToMe keeps the
  destination; :meth:`~tomviz.merge.plan.MergePlan.representatives`, tracked by the state as ``anchors``). A mean
  of the members' angles would be a position no patch has; the destination's is one the model was trained on.
- Segments: merging stays within a segment (:mod:`tomviz.merge.segments`): an image for Qwen2-VL; a window for
  Qwen2.5-VL, in every block (also the full-attention ones), so that no token spans two windows and the window
  partition stays valid in the windowed blocks after it. Each block's ``cu_seqlens`` is recomputed from the
  merged counts (the segments stay contiguous runs, in the tower's order).
- Metric: ToMe's keys, taken before the rotary embedding (content, not position: rotated keys of one content at
  two places differ). Proportional attention (``log size``) where the request asks for it.
- The attention the model computes is windowed and rotated; tomviz does not recompute it for methods or traces,
  so methods that read the attention map or a CLS row (hiprune, evit, diffrate; boundary methods that read the
  encoder's attention) are refused with a message, and the trace records groups and sizes only.

The patched block forward (:func:`vision_block`) is adapted from transformers 5.24 ``Qwen2VLVisionBlock.forward``
and ``VisionAttention.forward`` (Qwen2.5-VL's are the same up to the norm type); it runs only once something
merges or a trace is asked for; until then the original forward runs.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2VisionTransformerPretrainedModel,
    apply_rotary_pos_emb_vision,
)
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from tomviz.merge.engine import MergeState, current_state
from tomviz.merge.segments import segment_runs
from tomviz.models import adapter as image_adapters

TOWERS = (Qwen2VisionTransformerPretrainedModel, Qwen2_5_VisionTransformerPretrainedModel)
ATTENTION_NOT_RECORDED = "its attention is windowed and rotated per block, and tomviz does not recompute it"


@dataclass(frozen=True)
class TowerLayout:
    """The segments of one call's patch sequence ``[N0]``, in the tower's order (Qwen2.5-VL: window by window)."""

    images: torch.Tensor  # [N0] long: the image (frame) of each patch; full-attention blocks attend within it
    windows: torch.Tensor  # [N0] long: the window of each patch (Qwen2-VL: its image); merging stays within it
    full_blocks: frozenset[int]  # the blocks that attend over the whole image (Qwen2-VL: all)


@dataclass
class _Call:
    layout: TowerLayout | None
    token: contextvars.Token | None = None


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("tomviz_qwen_tower_layout", default=None)


def _segment_ids(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``[N]`` long: the segment of each token, from the boundaries ``[S + 1]``."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths)


def tower_layout(tower: nn.Module, grid_thw: torch.Tensor) -> TowerLayout:
    """The images and windows of the patches of ``grid_thw`` ``[num_images, 3]`` as ``tower`` orders them."""
    config = tower.config
    images = _segment_ids(get_vision_cu_seqlens(grid_thw))
    if not isinstance(tower, Qwen2_5_VisionTransformerPretrainedModel):
        return TowerLayout(images=images, windows=images, full_blocks=frozenset(range(len(tower.blocks))))
    _, cu_windows = get_vision_window_index(grid_thw, spatial_merge_size=config.spatial_merge_size,
                                            window_size=config.window_size, patch_size=config.patch_size)
    return TowerLayout(images=images, windows=_segment_ids(cu_windows), full_blocks=frozenset(config.fullatt_block_indexes))


def patch_order(tower: nn.Module, grid_thw: torch.Tensor) -> torch.Tensor:
    """``[N0]`` long: the tower's sequence index of each patch, the patches row-major per image (image after image).
    The tower orders them in 2 x 2 blocks (``get_vision_position_ids``) and Qwen2.5-VL also window by window."""
    merge = tower.config.spatial_merge_size
    rows_cols = get_vision_position_ids(grid_thw, merge)  # [N0, 2] (row, column) in block-major order
    if isinstance(tower, Qwen2_5_VisionTransformerPretrainedModel):
        window_index, _ = get_vision_window_index(grid_thw, spatial_merge_size=merge, window_size=tower.config.window_size,
                                                  patch_size=tower.config.patch_size)
        rows_cols = rows_cols.view(-1, merge * merge, 2)[window_index].reshape(-1, 2)  # the tower's window order
    counts = grid_thw.prod(-1)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)  # [N0] first patch of each image
    widths = torch.repeat_interleave(grid_thw[:, 2], counts)
    row_major = starts + (rows_cols[:, 0] % torch.repeat_interleave(grid_thw[:, 1], counts)) * widths + rows_cols[:, 1]
    return torch.argsort(row_major)


def _enter(tower: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """Forward pre-hook on the tower: this call's layout (only under a merge state), for its blocks."""
    layout = None
    if current_state() is not None:
        grid_thw = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
        layout = tower_layout(tower, grid_thw)
    call = _Call(layout)
    call.token = _CALL.set(call)


def _leave(tower: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
    """Forward hook on the tower (also after an error): the layout set by :func:`_enter` goes."""
    call = _CALL.get()
    if call is not None and call.token is not None:
        _CALL.reset(call.token)


def layout_hooks(model: nn.Module, tower: nn.Module) -> list[Any]:
    """The hooks that give each call's blocks the call's :class:`TowerLayout`."""
    return [tower.register_forward_pre_hook(_enter, with_kwargs=True),
            tower.register_forward_hook(_leave, with_kwargs=True, always_call=True)]


def segmented_attention(attention: nn.Module, hidden: torch.Tensor, segments: torch.Tensor,
                        rotary: tuple[torch.Tensor, torch.Tensor], bias: torch.Tensor | None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The tower's attention within each segment: hidden ``[N, C]``, segments ``[N]`` (contiguous runs), rotary
    ``(cos, sin)`` ``[N, head_dim]``, bias ``[1, 1, 1, N]`` or None → (output ``[N, C]``, keys before the rotary
    embedding ``[N, C]``).

    Adapted from transformers 5.24 ``VisionAttention.forward`` (``models/qwen2_vl/modeling_qwen2_vl.py``; Qwen2.5-VL's
    is the same). Changes: the segments come from ``segments`` instead of ``cu_seqlens``; the additive ``bias``
    (proportional attention) is passed to SDPA; the keys are returned; no dropout, no flash-attention path.
    """
    num_tokens = hidden.shape[0]
    query, key, value = attention.qkv(hidden).reshape(num_tokens, 3, attention.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    plain_keys = key.reshape(num_tokens, -1)  # [N, H*d]
    query, key = apply_rotary_pos_emb_vision(query, key, *rotary)  # [N, H, d]
    query, key, value = (t.transpose(0, 1)[None] for t in (query, key, value))  # [1, H, N, d]
    out = torch.empty_like(query)
    for start, end in segment_runs(segments):
        mask = None if bias is None else bias[..., start:end]  # [1, 1, 1, n]
        out[:, :, start:end] = F.scaled_dot_product_attention(query[:, :, start:end], key[:, :, start:end],
                                                              value[:, :, start:end], attn_mask=mask,
                                                              scale=attention.scaling)
    return attention.proj(out[0].transpose(0, 1).reshape(num_tokens, -1)), plain_keys


def vision_block(block: nn.Module, state: MergeState, index: int, num_heads: int, hidden: torch.Tensor,
                 mask: Any, cu_seqlens: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                 **kwargs: Any) -> torch.Tensor:
    """One vision block with the merge between the attention and the MLP: hidden ``[N, C]`` → ``[N - r, C]``.

    Adapted from transformers 5.24 ``Qwen2VLVisionBlock.forward`` (``Qwen2_5_VLVisionBlock.forward`` is the same).
    Changes: the tokens' rotary positions, images and windows are those of the patches they stand at
    (``state.anchors``); the attention runs per segment of the merged sequence (:func:`segmented_attention`:
    windows or images as the block's kind says, instead of the given ``cu_seqlens``) with the state's
    proportional-attention bias; after the attention residual ``state.after_attention`` merges within windows.
    """
    call = _CALL.get()
    if call is None or call.layout is None:
        raise RuntimeError("merging in a Qwen2-VL vision block needs the tower's layout: call the tower itself")
    method = state.config.method
    if method.needs_attention or method.needs_cls_attention:
        raise ValueError(f"{method.name} reads the vision encoder's attention, which tomviz does not record in "
                         f"Qwen2-VL's encoder ({ATTENTION_NOT_RECORDED})")
    layout = call.layout
    cos, sin = position_embeddings
    images, windows = layout.images, layout.windows
    if state.anchors is not None:
        anchors = state.anchors[0]  # [N] the patch each token stands at
        cos, sin, images, windows = cos[anchors], sin[anchors], images[anchors], windows[anchors]
    segments = images if index in layout.full_blocks else windows
    bias = state.attention_mask(None, hidden[None])  # None until something merged, then [1, 1, 1, N]
    attended, keys = segmented_attention(block.attn, block.norm1(hidden), segments, (cos, sin), bias)
    hidden = state.after_attention(index, (hidden + attended)[None], keys[None], None, num_heads, segments=windows)[0]
    return hidden + block.mlp(block.norm2(hidden))


QWEN2_VL_VISION = image_adapters.register(
    image_adapters.Adapter(
        family="qwen2_vl_vision",
        modality="image",
        find_backbone=lambda m: m if isinstance(m, TOWERS) else None,
        blocks=lambda backbone: list(backbone.blocks),
        num_protected=lambda backbone: 0,
        key_proj=lambda block: block.attn.qkv,
        query_proj=lambda block: block.attn.qkv,
        block_forward=vision_block,
        head_hooks=layout_hooks,
    )
)
