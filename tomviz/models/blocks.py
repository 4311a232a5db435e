"""The block forwards with the merge inserted, and the attention call that hands its keys and queries on.

A patched block runs its attention module through :func:`attend`, which returns the attention's
output together with the key and query projections that module computed (:class:`Projections`).
The block then passes them, as arguments, to
:meth:`MergeState.after_attention <tomviz.merge.engine.MergeState.after_attention>`. The projections
are read by forward hooks on the key/query ``nn.Linear`` (registered once by
``tomviz.models.patching.apply``) into the :class:`Projections` of the running :func:`attend` call
only (a ``ContextVar``), so concurrent calls never see each other's tensors and the attention kernel
(SDPA) is the model's own.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from tomviz.merge.engine import MergeState


@dataclass
class Projections:
    """The key and query projections of one attention call (None until the module computed them)."""

    keys: torch.Tensor | None = None  # [B, N, H*d]
    query: torch.Tensor | None = None  # [B, N, H*d]


_CAPTURING: contextvars.ContextVar[Projections | None] = contextvars.ContextVar("tomviz_projections", default=None)


def key_hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
    """Forward hook on a key projection: keep its output ``[B, N, H*d]`` for the running :func:`attend`."""
    captured = _CAPTURING.get()
    if captured is not None:
        captured.keys = output


def query_hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
    """Forward hook on a query projection: keep its output ``[B, N, H*d]`` for the running :func:`attend`."""
    captured = _CAPTURING.get()
    if captured is not None:
        captured.query = output


def attend(attention: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Projections]:
    """``attention(*args, **kwargs)`` (the block's own attention module) and the projections it computed."""
    captured = Projections()
    token = _CAPTURING.set(captured)
    try:
        out = attention(*args, **kwargs)
    finally:
        _CAPTURING.reset(token)
    return out, captured


def merge(state: MergeState, index: int, num_heads: int, x: torch.Tensor, projections: Projections) -> torch.Tensor:
    """Block ``index``'s merge: ``x`` ``[B, N, C]`` after the attention residual → ``[B, N - r, C]``."""
    return state.after_attention(index, x, projections.keys, projections.query, num_heads)


def prenorm_block(
    block: nn.Module,
    state: MergeState,
    index: int,
    num_heads: int,
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    names: tuple[str, str, str | None, str, str, str | None],
    **kwargs: Any,
) -> torch.Tensor:
    """A pre-norm block with the merge between the attention and the MLP.

    Adapted from transformers 5.24 ``ViTLayer.forward`` (``models/vit/modeling_vit.py``),
    which ``Dinov2Layer`` and ``CLIPEncoderLayer`` share up to names. Changes: the
    attention mask comes from the merge state (proportional attention); a method that joins
    the batch's frames (TempMe) joins and merges them first (``state.before_attention``); after the
    attention residual, ``state.after_attention`` merges the tokens, given the attention's
    keys and queries; optional layer scales; dropout / drop-path omitted (inference only).
    ``names`` = (norm1, attention, layer_scale1 | None, norm2, mlp, layer_scale2 | None).
    hidden: ``[B, N, C]`` → ``[B, N - r, C]`` (with a join: ``[B / g, g * N - r, C]``).
    """
    norm1, attn, scale1, norm2, mlp, scale2 = names
    hidden = state.before_attention(index, hidden)
    mask = state.attention_mask(mask, hidden)
    (h, _), projections = attend(getattr(block, attn), getattr(block, norm1)(hidden), attention_mask=mask, **kwargs)
    if scale1:
        h = getattr(block, scale1)(h)
    hidden = merge(state, index, num_heads, hidden + h, projections)
    h = getattr(block, mlp)(getattr(block, norm2)(hidden))
    if scale2:
        h = getattr(block, scale2)(h)
    return hidden + h
