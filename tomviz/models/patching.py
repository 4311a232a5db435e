"""Patching a transformers model so its layers merge tokens.

Two verbs: :func:`apply` (idempotent) and :func:`remove` (restores the original
forwards exactly), both under :data:`PATCH_LOCK` (also taken by ``tomviz.models.llm`` and
``tomviz.models.vlm``). Patching swaps each block's ``forward`` for one that asks the
per-call :class:`~tomviz.merge.engine.MergeState` what to do, and adds forward
hooks on the key (and query) projections so that the block can hand them to the state
(``tomviz/models/blocks.py``). With no active state a patched layer runs its original
forward, so a patched model can be shared by concurrent callers: the schedule and trace
travel with each call (``contextvars``), never on the model.

What is specific to an architecture family lives in an
:class:`~tomviz.models.adapter.Adapter` (``tomviz/models/{vit,dinov2,clip,siglip,bert}.py``):
where the blocks are, how many leading tokens are protected, and the block forward with
the merge inserted (``tomviz/models/blocks.py``).
"""
from __future__ import annotations

import inspect
import threading
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from tomviz.merge.engine import MergeConfig, MergeState, current_state
from tomviz.models.adapter import ADAPTERS, Adapter, UnsupportedModelError, find_adapter, register  # noqa: F401
from tomviz.models.blocks import key_hook, prenorm_block, query_hook  # noqa: F401 - re-exported

_PATCHED = "_tomviz_patched"  # attribute on the root model: PatchInfo
_DEFAULT_CONFIG = "_tomviz_config"  # attribute on the root model: MergeConfig set by tomviz.patch()
# Every apply/remove of tomviz (encoder blocks, LLM layers, VLM hooks) checks and then changes a shared
# model: several first callers at once (app visitors, threads) would otherwise patch it twice, and
# remove() would then restore the first patch, not the original. One lock for all of them.
PATCH_LOCK = threading.RLock()


@dataclass
class PatchInfo:
    adapter: Adapter
    backbone: nn.Module
    blocks: list[nn.Module]
    num_heads: int
    hooks: list[Any]


def _make_block_forward(adapter: Adapter, block: nn.Module, index: int, num_heads: int) -> Callable:
    original = block.forward
    takes_mask = "attention_mask" in inspect.signature(original).parameters  # VideoMAE's layers take none

    def forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        state = current_state()
        mask = (attention_mask,) if takes_mask or attention_mask is not None else ()
        if state is None:
            return original(hidden_states, *mask, *args, **kwargs)
        flat = hidden_states.dim() == 2  # a tower that runs on one flat [N, C] sequence (Qwen2-VL): batch 1
        tokens = hidden_states[None] if flat else hidden_states  # [B, N, C]
        skipped = state.skip_block(index, tokens)
        if skipped is not None:
            return skipped[0] if flat else skipped
        state.begin(tokens, attention_mask)
        if state.passthrough(index):
            return original(hidden_states, *mask, *args, **kwargs)
        out = adapter.block_forward(self, state, index, num_heads, hidden_states, attention_mask, **kwargs)
        state.block_done(out[None] if flat else out)
        return out

    return types.MethodType(forward, block)


def _make_root_forward(model: nn.Module) -> Callable:
    original = model.forward

    def forward(self: nn.Module, *args, **kwargs):
        config: MergeConfig | None = getattr(self, _DEFAULT_CONFIG, None)
        if current_state() is not None or config is None:
            return original(*args, **kwargs)
        with new_state(self, config):
            return original(*args, **kwargs)

    return types.MethodType(forward, model)


def apply(model: nn.Module) -> PatchInfo:
    """Make ``model`` merge-capable (idempotent, also under concurrent first use). Without an active merge
    state it behaves exactly as before."""
    info: PatchInfo | None = getattr(model, _PATCHED, None)
    if info is not None:
        return info
    with PATCH_LOCK:
        return _apply_locked(model)


def _apply_locked(model: nn.Module) -> PatchInfo:
    info: PatchInfo | None = getattr(model, _PATCHED, None)
    if info is not None:  # another thread patched it while this one waited
        return info
    adapter, backbone = find_adapter(model)
    blocks = adapter.blocks(backbone)
    num_heads = int(backbone.config.num_attention_heads)
    hooks = []
    for index, block in enumerate(blocks):
        block.forward = _make_block_forward(adapter, block, index, num_heads)
        hooks.append(adapter.key_proj(block).register_forward_hook(key_hook))
        hooks.append(adapter.query_proj(block).register_forward_hook(query_hook))
    hooks.extend(adapter.head_hooks(model, backbone))
    model.forward = _make_root_forward(model)
    info = PatchInfo(adapter=adapter, backbone=backbone, blocks=blocks, num_heads=num_heads, hooks=hooks)
    setattr(model, _PATCHED, info)
    return info


def remove(model: nn.Module) -> nn.Module:
    """Undo :func:`apply`: original forwards back, hooks removed. Safe on an unpatched model."""
    with PATCH_LOCK:
        return _remove_locked(model)


def _remove_locked(model: nn.Module) -> nn.Module:
    info: PatchInfo | None = getattr(model, _PATCHED, None)
    if info is None:
        return model
    for block in info.blocks:
        if "forward" in block.__dict__:
            del block.forward
    for hook in info.hooks:
        hook.remove()
    if "forward" in model.__dict__:
        del model.forward
    for attr in (_PATCHED, _DEFAULT_CONFIG):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


def set_default_config(model: nn.Module, config: MergeConfig | None) -> None:
    """The config used by calls made without tomviz (``tomviz.patch``)."""
    setattr(model, _DEFAULT_CONFIG, config)


def new_state(model: nn.Module, config: MergeConfig, meta: dict[str, Any] | None = None) -> MergeState:
    info = apply(model)
    num_protected = info.adapter.num_protected(info.backbone)
    meta = {"family": info.adapter.family, "modality": info.adapter.modality, **(meta or {})}
    return MergeState(config, num_protected=num_protected, num_layers=len(info.blocks), meta=meta)
