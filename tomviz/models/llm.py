"""The language model of a VLM (Llama / Qwen2 decoder layers): what tomviz changes inside it.

Patching wraps every decoder layer's ``forward``. With no active :class:`LLMState`
(a ``ContextVar``, one per call) a wrapped layer runs its original forward unchanged,
so one patched model serves concurrent callers with different settings.

Under an active state a layer may

* add a per-key bias to its attention logits (``log(size)`` of merged visual tokens:
  proportional attention through the mask). The bias goes into the additive float mask
  that SDPA receives, so SDPA stays the kernel;
* (FastV) at layer ``K - 1`` compute the attention of the last prompt token to every
  token, and from layer ``K`` on drop the visual tokens it attended to least: the hidden
  states, the rotary cos/sin and the mask are sliced; the KV cache of layers ≥ K holds
  only the kept tokens, layers < K hold all (positions stay the original ones);
* record the attention of chosen query tokens (the answer) to every key, mean over heads;
* (DyMU's virtual token unmerging, :class:`VirtualTokens`) compute every prefill attention as
  if the unmerged sequence were present: see :func:`vtu_attention`.

Attention probabilities are recomputed from the layer's input (``input_layernorm``,
``q_proj``/``k_proj``, the model's own rotary function), so nothing asks the attention
kernel for its weights.
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from tomviz.merge.context import PerCallState
from tomviz.models.patching import PATCH_LOCK

_PATCHED = "_tomviz_llm_patched"


@dataclass
class FastVRequest:
    """Drop visual tokens inside the LLM."""

    layer: int  # K: layers K.. see only the kept tokens (the attention is read in layer K-1)
    keep: int  # visual tokens kept
    select: Callable[[torch.Tensor], torch.Tensor]  # attention [1, V] → kept visual indices [k] (ascending)
    query: int = -1  # the prefill position whose attention decides: the last prompt token (-1: the last position)


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


@dataclass
class LLMState(PerCallState, context="tomviz_llm_state"):
    """Per-call state of the language model (batch 1). Sequence positions index the prefill tokens.
    ``with state:`` makes it the current one for the patched decoder layers."""

    visual: torch.Tensor  # [L] bool, the visual tokens of the prefill sequence
    key_bias: torch.Tensor | None = None  # [L] or [B, L] float, added to every attention logit towards that key (log size; 0 = text)
    fastv: FastVRequest | None = None
    record_queries: torch.Tensor | None = None  # [Q] long: record these queries' attention (one pass, no cache)
    vtu: VirtualTokens | None = None  # DyMU's virtual token unmerging in every prefill attention
    # filled during the call
    keep: torch.Tensor | None = None  # [L'] long, prefill positions that layers >= K keep (FastV)
    last_attention: torch.Tensor | None = None  # [L] attention of the last prompt token in layer K-1 (mean over heads)
    attention: list[torch.Tensor] = field(default_factory=list)  # per layer [Q, L_l], mean over heads


def current_state() -> LLMState | None:
    """The language model's state of this call, or None."""
    return LLMState.current()


def _rotary(attn: nn.Module) -> Callable:
    return sys.modules[type(attn).__module__].apply_rotary_pos_emb


def layer_attention(
    layer: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    queries: torch.Tensor,
    key_bias: torch.Tensor | None,
) -> torch.Tensor:
    """Causal attention probabilities of ``queries`` inside ``layer``, mean over heads.

    hidden: ``[1, L, C]`` the layer's input (no cache: the whole sequence); queries: ``[Q]``
    positions; key_bias: ``[L]`` or None. Returns ``[Q, L]`` float32.
    """
    attn = layer.self_attn
    h = layer.input_layernorm(hidden)
    head_dim = attn.head_dim
    q = attn.q_proj(h[:, queries]).view(1, len(queries), -1, head_dim).transpose(1, 2)  # [1, H, Q, d]
    k = attn.k_proj(h).view(1, h.shape[1], -1, head_dim).transpose(1, 2)  # [1, Hkv, L, d]
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = position_embeddings
    q, _ = _rotary(attn)(q, q, cos[:, queries], sin[:, queries])
    _, k = _rotary(attn)(k, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # [1, H, L, d]
    logits = (q @ k.transpose(-1, -2)).float() * attn.scaling  # [1, H, Q, L]
    if key_bias is not None:
        logits = logits + key_bias.float()
    future = torch.arange(h.shape[1], device=h.device)[None, :] > queries[:, None]  # [Q, L]
    logits = logits.masked_fill(future, -torch.inf)
    return logits.softmax(-1).mean(1)[0]  # [Q, L]


def _bias_mask(
    mask: torch.Tensor | None, bias: torch.Tensor, q_len: int, kv_len: int, dtype: torch.dtype
) -> torch.Tensor:
    """An additive ``[B, 1, q_len, kv_len]`` mask: causal (or the model's ``mask``) plus ``bias``
    (``[Lb]`` or ``[B, Lb]``) on the first ``Lb`` keys (zero on later keys: generated tokens)."""
    device = bias.device
    rows = bias.reshape(-1, bias.shape[-1])  # [B or 1, Lb]
    full = torch.zeros(rows.shape[0], kv_len, dtype=torch.float32, device=device)
    full[:, : rows.shape[1]] = rows
    full = full[:, None, None, :]  # [B, 1, 1, kv]
    if mask is None:
        query_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
        allowed = torch.arange(kv_len, device=device)[None, :] <= query_pos  # [q, kv]
        base = torch.zeros(q_len, kv_len, device=device).masked_fill(~allowed, -torch.inf)[None, None]
    elif mask.dtype == torch.bool:
        base = torch.zeros(mask.shape, device=device).masked_fill(~mask, -torch.inf)
    else:
        base = mask.float()
    return (base + full).to(dtype)


def _slice_keys(mask: torch.Tensor, keep: torch.Tensor, prefix: int) -> torch.Tensor:
    """Keep the key columns ``keep`` of the prefill and every later key. mask: ``[B, 1, q, kv]``."""
    later = torch.arange(prefix, mask.shape[-1], device=mask.device)
    return mask.index_select(-1, torch.cat([keep, later]))


def _make_forward(layer: nn.Module, index: int) -> Callable:
    original = layer.forward

    def forward(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        state = current_state()
        if state is None:
            return original(hidden_states, *args, **kwargs)
        prefix = state.visual.shape[0]
        prefill = hidden_states.shape[1] > 1 and kwargs.get("position_embeddings") is not None and (
            kwargs["position_embeddings"][0].shape[1] == prefix
        )
        fastv = state.fastv
        dropped = fastv is not None and index >= fastv.layer and state.keep is not None
        mask = kwargs.get("attention_mask")
        key_bias = state.key_bias
        if dropped:
            keep = state.keep
            if prefill:
                if index == fastv.layer:
                    hidden_states = hidden_states[:, keep]
                cos, sin = kwargs["position_embeddings"]
                kwargs["position_embeddings"] = (cos[:, keep], sin[:, keep])
                if kwargs.get("position_ids") is not None:
                    kwargs["position_ids"] = kwargs["position_ids"][:, keep]
                if mask is not None:
                    mask = _slice_keys(mask, keep, prefix).index_select(-2, keep)
            elif mask is not None:
                mask = _slice_keys(mask, keep, prefix)
            if key_bias is not None:
                key_bias = key_bias[..., keep]
        if prefill and state.record_queries is not None and state.vtu is None:  # (VTU records in vtu_attention)
            queries = torch.searchsorted(state.keep, state.record_queries) if dropped else state.record_queries
            probs = layer_attention(self, hidden_states, kwargs["position_embeddings"], queries, key_bias)
            if dropped:  # back onto the prefill positions; dropped keys get 0
                probs = probs.new_zeros(len(queries), prefix).index_copy_(1, state.keep, probs)
            state.attention.append(probs)
        if fastv is not None and prefill and index == fastv.layer - 1:
            last = torch.tensor([fastv.query % hidden_states.shape[1]], device=hidden_states.device)
            state.last_attention = layer_attention(self, hidden_states, kwargs["position_embeddings"], last, key_bias)[0]
            visual_index = state.visual.nonzero()[:, 0]  # [V]
            kept_visual = visual_index[fastv.select(state.last_attention[visual_index][None])]
            state.keep = torch.cat([(~state.visual).nonzero()[:, 0], kept_visual]).sort().values
        if key_bias is not None:
            q_len = hidden_states.shape[1]
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = cache.get_seq_length(self.self_attn.layer_idx) if cache is not None else 0
            mask = _bias_mask(mask, key_bias, q_len, past + q_len, hidden_states.dtype)
        if "attention_mask" in kwargs or mask is not None:
            kwargs["attention_mask"] = mask
        return original(hidden_states, *args, **kwargs)

    return types.MethodType(forward, layer)


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
    qv, kv = _rotary(attn)(qv, kv, cos, sin)
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
    virtual queries' probabilities averaged over each merged query's copies, summed over each merged key's copies.
    qv, kv: ``[B, H, Lv, d]``; counts: ``[L]`` copies per merged token."""
    logits = (qv.float() @ kv.float().transpose(-1, -2)) * scale  # [B, H, Lv, Lv]
    if mask is not None:
        logits = logits + mask.float()
    else:
        logits = logits.masked_fill(~torch.ones_like(logits[0, 0], dtype=torch.bool).tril(), -torch.inf)
    probs = logits[0].softmax(-1).mean(0)  # [Lv, Lv]
    length, num_virtual = counts.shape[0], index.shape[0]
    per_query = probs.new_zeros(length, num_virtual).index_add_(0, index, probs) / counts[:, None]  # [L, Lv]
    return per_query[record].new_zeros(len(record), length).index_add_(1, index, per_query[record])


def _make_attention(attn: nn.Module) -> Callable:
    original = attn.forward

    def forward(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        state = current_state()
        vtu = None if state is None else state.vtu
        # (hidden_states, position_embeddings, attention_mask, cache) is the attention's positional order
        cache = kwargs.get("cache", kwargs.get("past_key_values", args[2] if len(args) > 2 else None))
        if vtu is None or hidden_states.shape[1] < vtu.num_merged or (
            cache is not None and cache.get_seq_length(self.layer_idx) > 0
        ):
            return original(hidden_states, *args, **kwargs)  # decoding: the cache holds the virtual keys
        key_bias = state.key_bias
        if key_bias is not None and not bool(key_bias.any()):
            key_bias = None
        out, recorded = vtu_attention(self, hidden_states, vtu, cache, key_bias, state.record_queries)
        state.attention.extend(recorded)
        return out, None

    return types.MethodType(forward, attn)


def apply(language_model: nn.Module) -> None:
    """Wrap the decoder layers of ``language_model`` (``.layers``) and their ``self_attn``; idempotent, also
    under concurrent first use (``patching.PATCH_LOCK``)."""
    if getattr(language_model, _PATCHED, False):
        return
    with PATCH_LOCK:
        if getattr(language_model, _PATCHED, False):  # another thread patched it while this one waited
            return
        for index, layer in enumerate(language_model.layers):
            layer.forward = _make_forward(layer, index)
            layer.self_attn.forward = _make_attention(layer.self_attn)
        setattr(language_model, _PATCHED, True)


def remove(language_model: nn.Module) -> None:
    """Undo :func:`apply`: the original forwards back. Safe on an unpatched model."""
    with PATCH_LOCK:
        if not getattr(language_model, _PATCHED, False):
            return
        for layer in language_model.layers:
            for module in (layer, layer.self_attn):
                if "forward" in module.__dict__:
                    del module.forward
        delattr(language_model, _PATCHED)
