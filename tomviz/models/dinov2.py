"""DINOv2, with and without registers (``Dinov2Model``, ``Dinov2WithRegistersModel`` and heads).

Blocks: ``backbone.encoder.layer`` (pre-norm with layer scale). Protected: CLS
and the register tokens that follow it. The image-classification heads feed
their classifier ``[CLS, mean of the patch tokens]``; once tokens are merged,
that mean is weighted by token size (see :func:`size_weighted_head`).
"""
from __future__ import annotations

from functools import partial

from typing import Any

import torch
from torch import nn
from transformers import (
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersForImageClassification,
    Dinov2WithRegistersModel,
)

from tomviz.merge.engine import current_state
from tomviz.models.adapter import Adapter, register
from tomviz.models.blocks import prenorm_block

_NAMES = ("norm1", "attention", "layer_scale1", "norm2", "mlp", "layer_scale2")


def _find(model: nn.Module) -> nn.Module | None:
    for candidate in (model, getattr(model, "dinov2", None), getattr(model, "dinov2_with_registers", None)):
        if isinstance(candidate, (Dinov2Model, Dinov2WithRegistersModel)):
            return candidate
    return None


def size_weighted_head(model: nn.Module, backbone: nn.Module) -> list[Any]:
    """Hooks so a DINOv2 classifier pools merged tokens by size.

    transformers 5.24's ``Dinov2(WithRegisters)ForImageClassification`` computes
    ``classifier(cat([seq[:, 0], seq[:, 1 + R:].mean(1)]))`` with ``seq`` the backbone's
    final ``layernorm`` output ``[B, N, C]``. A merged token stands for ``size`` patches, so
    the mean that equals the mean over the unmerged patches is ``Σ size·x / Σ size`` over
    the patch tokens (after the P protected ones). One hook keeps ``seq``, the other
    swaps the classifier's input ``[B, 2C]``; with nothing merged they do nothing.
    """
    if not isinstance(model, (Dinov2ForImageClassification, Dinov2WithRegistersForImageClassification)):
        return []

    def keep_tokens(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        state = current_state()
        if state is not None:
            state.record_output(output)  # [B, N_L, C]

    def weighted_input(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor] | None:
        state = current_state()
        if state is None or state.sizes is None or state.final_tokens is None:
            return None
        tokens, p = state.final_tokens, state.num_protected
        sizes = state.token_weights(tokens)[:, p:]  # [B, N_L - P, 1]; tokens absent from a coalition weigh 0
        patch_mean = (tokens[:, p:] * sizes).sum(1) / sizes.sum(1)  # [B, C]
        return (torch.cat([tokens[:, 0], patch_mean], dim=1),)

    return [
        backbone.layernorm.register_forward_hook(keep_tokens),
        model.classifier.register_forward_pre_hook(weighted_input),
    ]


DINOV2 = register(
    Adapter(
        family="dinov2",
        modality="image",
        label="DINOv2",
        model_types=frozenset({"dinov2", "dinov2_with_registers"}),
        find_backbone=_find,
        blocks=lambda backbone: list(backbone.encoder.layer),
        num_protected=lambda backbone: 1 + int(getattr(backbone.config, "num_register_tokens", 0) or 0),
        key_proj=lambda block: block.attention.k_proj,
        query_proj=lambda block: block.attention.q_proj,
        block_forward=partial(prenorm_block, names=_NAMES),
        head_hooks=size_weighted_head,
    )
)
