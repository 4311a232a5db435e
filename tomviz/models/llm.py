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
* record the attention of chosen query tokens (the answer) to every key, mean over heads.

Attention probabilities are recomputed from the layer's input (``input_layernorm``,
``q_proj``/``k_proj``, the model's own rotary function), so nothing asks the attention
kernel for its weights.
"""
from __future__ import annotations

import contextvars
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

_PATCHED = "_tomviz_llm_patched"


@dataclass
class FastVRequest:
    """Drop visual tokens inside the LLM."""

    layer: int  # K: layers K.. see only the kept tokens (the attention is read in layer K-1)
    keep: int  # visual tokens kept
    select: Callable[[torch.Tensor], torch.Tensor]  # attention [1, V] → kept visual indices [k] (ascending)
    query: int = -1  # the prefill position whose attention decides: the last prompt token (-1: the last position)


@dataclass
class LLMState:
    """Per-call state of the language model (batch 1). Sequence positions index the prefill tokens."""

    visual: torch.Tensor  # [L] bool, the visual tokens of the prefill sequence
    key_bias: torch.Tensor | None = None  # [L] or [B, L] float, added to every attention logit towards that key (log size; 0 = text)
    fastv: FastVRequest | None = None
    record_queries: torch.Tensor | None = None  # [Q] long: record these queries' attention (one pass, no cache)
    # filled during the call
    keep: torch.Tensor | None = None  # [L'] long, prefill positions that layers >= K keep (FastV)
    last_attention: torch.Tensor | None = None  # [L] attention of the last prompt token in layer K-1 (mean over heads)
    attention: list[torch.Tensor] = field(default_factory=list)  # per layer [Q, L_l], mean over heads

    def __enter__(self) -> "LLMState":
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _CURRENT.reset(self._token)


_CURRENT: contextvars.ContextVar[LLMState | None] = contextvars.ContextVar("tomviz_llm_state", default=None)


def current_state() -> LLMState | None:
    return _CURRENT.get()


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
        if prefill and state.record_queries is not None:
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


def apply(language_model: nn.Module) -> None:
    """Wrap the decoder layers of ``language_model`` (``.layers``), idempotent."""
    if getattr(language_model, _PATCHED, False):
        return
    for index, layer in enumerate(language_model.layers):
        layer.forward = _make_forward(layer, index)
    setattr(language_model, _PATCHED, True)


def remove(language_model: nn.Module) -> None:
    if not getattr(language_model, _PATCHED, False):
        return
    for layer in language_model.layers:
        if "forward" in layer.__dict__:
            del layer.forward
    delattr(language_model, _PATCHED)
