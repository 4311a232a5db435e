"""Attention through merges: CLS→group attention per layer and size-aware attention rollout.

Layer l's attention is over the tokens *entering* l (``N_in = N_{l-1}``). A merged token
stands for ``size`` input tokens and, with proportional attention, receives attention for
all of them; ``share=True`` divides its attention among its members so that the input
tokens' attention still sums to one.
"""
from __future__ import annotations

import numpy as np

from tomviz.trace import Trace


def cls_attention(trace: Trace, layer: int, head: int | None = None) -> np.ndarray:
    """CLS→token attention inside ``layer`` over the tokens entering it: ``[N_in]``.

    head: None = mean over heads; an index needs ``inspect(..., cls_attention_heads=True)``.
    """
    lt = trace.layers[layer]
    if head is None:
        if lt.cls_attention is None:
            raise ValueError("this trace has no CLS attention (inspect records it by default)")
        return lt.cls_attention
    if lt.cls_attention_heads is None:
        raise ValueError("per-head CLS attention needs inspect(..., cls_attention_heads=True)")
    return lt.cls_attention_heads[head]


def cls_attention_to_input(trace: Trace, layer: int, head: int | None = None, share: bool = True) -> np.ndarray:
    """``[N0]``: layer ``layer``'s CLS attention spread to the input tokens through the groups
    entering it (``share``: each member gets attention / group size). Pruned tokens: nan."""
    layer = layer % trace.num_layers
    attn = np.asarray(cls_attention(trace, layer, head), dtype=np.float32)  # [N_in]
    if share:
        attn = attn / trace.sizes_entering(layer)
    return trace.spread(attn, layer, entering=True)


def cls_attention_grid(trace: Trace, layer: int, head: int | None = None, share: bool = True) -> np.ndarray:
    """``[rows, cols]``: :func:`cls_attention_to_input` over the patch grid (image models)."""
    return trace.on_patch_grid(cls_attention_to_input(trace, layer, head, share)).astype(np.float32)


def _merge_matrix(trace: Trace, layer: int) -> np.ndarray:
    """``[N_l, N_in]``: token after ``layer`` = size-weighted mean of the tokens entering it."""
    before, after = trace.groups_entering(layer), trace.groups(layer)  # [N0] each
    sizes_in = trace.sizes_entering(layer)
    num_in = trace.layers[layer].num_tokens_in
    m = np.zeros((trace.layers[layer].num_tokens, num_in), dtype=np.float64)
    keep = (before >= 0) & (after >= 0)
    m[after[keep], before[keep]] = sizes_in[before[keep]]  # each entering token once (members agree)
    total = m.sum(1, keepdims=True)
    return np.divide(m, total, out=np.zeros_like(m), where=total > 0)


def rollout(trace: Trace, last: int | None = None, residual: float = 0.5) -> np.ndarray:
    """Attention rollout across layers while the token set shrinks: ``[N_last, N0]``.

    Per layer: Â = residual·I + (1 − residual)·A (A ``[N_in, N_in]``, proportional attention
    included as the model used it), then the merge M ``[N_l, N_in]`` (size-weighted mean):
    R ← M · Â · R, from R = I ``[N0, N0]``. Row 0 is the CLS token's rollout over the input
    tokens (sums to 1). Needs ``inspect(..., full_attention=True)``.
    """
    last = trace.num_layers - 1 if last is None else last % trace.num_layers
    roll = np.eye(trace.num_input_tokens)
    for layer in range(last + 1):
        attn = trace.layers[layer].attention
        if attn is None:
            raise ValueError("attention rollout needs the full attention: inspect(..., full_attention=True)")
        a = residual * np.eye(attn.shape[0]) + (1 - residual) * attn.astype(np.float64)  # [N_in, N_in]
        a = a / a.sum(1, keepdims=True)
        roll = _merge_matrix(trace, layer) @ (a @ roll)  # [N_l, N0]
    return roll


def rollout_to_input(trace: Trace, last: int | None = None, residual: float = 0.5) -> np.ndarray:
    """``[N0]``: the CLS row of :func:`rollout`."""
    return rollout(trace, last, residual)[0].astype(np.float32)


def rollout_grid(trace: Trace, last: int | None = None, residual: float = 0.5) -> np.ndarray:
    """``[rows, cols]``: :func:`rollout_to_input` over the patches (protected tokens dropped)."""
    return trace.on_patch_grid(rollout_to_input(trace, last, residual)).astype(np.float32)
