"""DyMU's virtual token unmerging (VTU) in the language model of a VLM: every prefill attention computed as if
the unmerged sequence were present (:func:`vtu_attention`). The patched decoder layers of
:mod:`tomviz.models.llm` call it when a call's state carries :class:`VirtualTokens`."""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


def rotary_function(attn: nn.Module) -> Callable:
    """The ``apply_rotary_pos_emb`` of the module that defines ``attn``'s class (Llama, Qwen2, ...)."""
    return sys.modules[type(attn).__module__].apply_rotary_pos_emb


@dataclass
class VirtualTokens:
    """DyMU's virtual token unmerging (VTU): the unmerged ("virtual") sequence behind a merged prefill.

    ``index[j]`` is the prefill position (merged sequence) that virtual token ``j`` is a copy of;
    virtual token ``j`` sits at RoPE position ``j``. Text tokens map one to one, each merged visual
    token is expanded once per member, at its members' positions. Tokens after the prefill (teacher-
    forced answers) extend both one to one.
    """

    index: torch.Tensor  # [Lv] long, ascending groups allowed in any order; index.max() + 1 = L' (prefill length)
    rotary: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # the LLM's rotary_emb(x, position_ids)
    _cos_sin: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # per-call cache, by length

    @property
    def num_merged(self) -> int:
        return int(self.index.max()) + 1

    def expanded(self, length: int) -> torch.Tensor:
        """``[Lv + extra]``: the index for a sequence of ``length = L' + extra`` merged positions."""
        extra = length - self.num_merged
        tail = torch.arange(self.num_merged, length, device=self.index.device)
        return torch.cat([self.index, tail]) if extra > 0 else self.index

    def cos_sin(self, like: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE ``(cos, sin)``, each ``[1, length, d]``, for virtual positions ``0..length-1``."""
        if length not in self._cos_sin:
            positions = torch.arange(length, device=like.device)[None]
            self._cos_sin[length] = self.rotary(like, positions)
        return self._cos_sin[length]



def vtu_attention(
    attn: nn.Module,
    hidden: torch.Tensor,
    vtu: VirtualTokens,
    cache: Any,
    key_bias: torch.Tensor | None,
    record: torch.Tensor | None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One prefill self-attention with DyMU's virtual token unmerging.

    hidden: ``[B, L, C]`` the merged sequence after ``input_layernorm`` (``L = L' + extra``).
    Queries, keys and values are projected once per merged token (``[B, H, L, d]``), copied to the
    ``Lv`` virtual tokens (``vtu.expanded(L)``), rotated with the virtual positions, and attended
    causally over the virtual sequence (SDPA). Each merged token's output is the mean of its copies'
    outputs, then ``o_proj``: ``[B, L, C]``. The virtual keys/values go into ``cache``, so the next
    token sits at position ``Lv`` and attends to every member separately.
    key_bias: ``[L]`` or ``[B, L]`` additive bias per merged key (copied to its virtual keys), or None.
    record: ``[Q]`` merged positions whose attention to the merged keys is returned
    (``[Q, L]`` each, mean over heads and over the query's copies; a key's value sums its copies).

    Follows DyMU (github.com/MikeWangWZHL/dymu, commit 8c38a00), written from it, not copied:
    ``LLaVA/llava/model/language_model/llava_llama.py``, ``CustomLlamaAttention.forward`` (its "direct token
    expansion" version: gather Q/K/V with ``mapping_indices``, RoPE at the unmerged positions, the stock
    attention kernel, ``scatter_mean`` of the outputs back to the merged tokens; the stock cache then holds the
    expanded keys) and ``LlavaLlamaModel.forward`` (virtual positions ``0..N-1``). Differences: DyMU feeds the
    LLM the full-length sequence with each merged token repeated and averages it down before the first layer;
    here the merged sequence is built directly (the same values), each group at its first member's place, the
    mapping taken from the boundary's plan; the mapping is extended one to one for tokens appended after the
    prefill (teacher forcing); SDPA is called directly with grouped-query heads expanded; an additive per-key
    bias (copied to every virtual key of a merged key) and attention recording are supported; sliding-window
    layers are refused. DyMU's ``vtu_attention_exact_imple.py`` (four einsum RoPE terms, a custom cache of
    unrotated keys with their cos/sin) computes the same scores.
    """
    if getattr(attn, "sliding_window", None):
        raise NotImplementedError("virtual token unmerging with sliding-window attention layers is not implemented")
    batch, length, _ = hidden.shape
    head_dim = attn.head_dim
    shape = (batch, length, -1, head_dim)
    q, k = attn.q_proj(hidden).view(shape), attn.k_proj(hidden).view(shape)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, L, d], [B, Hkv, L, d]
    v = attn.v_proj(hidden).view(shape).transpose(1, 2)  # [B, Hkv, L, d]
    index = vtu.expanded(length)  # [Lv]
    num_virtual = index.shape[0]
    cos, sin = vtu.cos_sin(v, num_virtual)  # [1, Lv, d]
    qv, kv, vv = q[:, :, index], k[:, :, index], v[:, :, index]  # [B, H(kv), Lv, d]
    qv, kv = rotary_function(attn)(qv, kv, cos, sin)
    if cache is not None:
        kv, vv = cache.update(kv, vv, attn.layer_idx)
    groups = qv.shape[1] // kv.shape[1]
    kv, vv = kv.repeat_interleave(groups, dim=1), vv.repeat_interleave(groups, dim=1)  # [B, H, Lv, d]
    mask = None if key_bias is None else _virtual_key_mask(key_bias, index, length).to(qv.dtype)  # [B, 1, Lv, Lv]
    out = torch.nn.functional.scaled_dot_product_attention(qv, kv, vv, attn_mask=mask, is_causal=mask is None,
                                                           scale=attn.scaling)  # [B, H, Lv, d]
    counts = torch.zeros(length, device=hidden.device).index_add_(0, index, torch.ones_like(index, dtype=torch.float))
    merged = out.new_zeros(batch, out.shape[1], length, head_dim).index_add_(2, index, out)
    merged = merged / counts.to(out.dtype)[:, None]  # [B, H, L, d] mean over each token's copies
    recorded = [] if record is None else [_merged_attention(qv, kv, mask, attn.scaling, index, counts, record)]
    return attn.o_proj(merged.transpose(1, 2).reshape(batch, length, -1)), recorded


def _virtual_key_mask(key_bias: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
    """``[B or 1, 1, Lv, Lv]`` causal additive mask over the virtual tokens; each virtual key carries its merged
    key's bias (``key_bias`` ``[L'']`` or ``[B, L'']``, zero beyond its end). ``index``: ``[Lv]`` merged index of
    each virtual token."""
    rows = key_bias.reshape(-1, key_bias.shape[-1]).float()  # [B or 1, L'']
    full = torch.zeros(rows.shape[0], length, device=index.device)
    known = min(rows.shape[1], length)
    full[:, :known] = rows[:, :known]
    num_virtual = index.shape[0]
    causal = torch.ones(num_virtual, num_virtual, dtype=torch.bool, device=index.device).tril()
    return full[:, index][:, None, None, :].masked_fill(~causal, -torch.inf)


def _merged_attention(qv: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None, scale: float, index: torch.Tensor,
                      counts: torch.Tensor, record: torch.Tensor) -> torch.Tensor:
    """``[Q, L]`` attention of the merged queries ``record`` to the merged keys (batch element 0, mean over heads):
    virtual queries' probabilities averaged over each merged query's copies, summed over each merged key's copies
    (only the copies of ``record`` are computed).
    qv, kv: ``[B, H, Lv, d]``; counts: ``[L]`` copies per merged token."""
    rows = torch.isin(index, record).nonzero()[:, 0]  # [R] the virtual queries that copy a recorded token
    logits = (qv[:, :, rows].float() @ kv.float().transpose(-1, -2)) * scale  # [B, H, R, Lv]
    length, num_virtual = counts.shape[0], index.shape[0]
    if mask is not None:
        logits = logits + mask[:, :, rows].float()
    else:
        logits = logits.masked_fill(torch.arange(num_virtual, device=index.device) > rows[:, None], -torch.inf)
    probs = logits[0].softmax(-1).mean(0)  # [R, Lv]
    per_query = probs.new_zeros(length, num_virtual).index_add_(0, index[rows], probs) / counts[:, None]  # [L, Lv]
    return per_query[record].new_zeros(len(record), length).index_add_(1, index, per_query[record])
