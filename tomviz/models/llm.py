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
* (HoliTom's inner merge, ``FastVRequest.fold``) at layer ``K`` fold the visual tokens FastV's choice drops into
  the kept ones before slicing (:mod:`tomviz.merge.holitom_inner`);
* (DyCoke, :class:`DyCokeRequest`) in each decoding step recompute the new token's attention in layer ``l - 1``
  against that layer's cache and, when :mod:`tomviz.merge.dycoke_cache` says so, mask the visual keys it leaves
  out in layers ``>= l`` for that step (the cache keeps them);
* record the attention of chosen query tokens (the answer) to every key, mean over heads;
* (DyMU's virtual token unmerging, :class:`VirtualTokens`) compute every prefill attention as
  if the unmerged sequence were present: see :func:`tomviz.models.vtu.vtu_attention`.

Attention probabilities are recomputed from the layer's input (``input_layernorm``,
``q_proj``/``k_proj``, the model's own rotary function), so nothing asks the attention
kernel for its weights.
"""
from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tomviz.merge import aim
from tomviz.merge.context import PerCallState
from tomviz.models.mustdrop import MustDropRequest
from tomviz.models.patching import PATCH_LOCK
from tomviz.models.vtu import VirtualTokens, vtu_attention
from tomviz.models.vtu import rotary_function as _rotary

__all__ = ["AIMRequest", "DyCokeRequest", "FastVRequest", "LLMState", "VirtualTokens", "apply", "current_state", "layer_attention",
           "layer_logits", "remove", "vtu_attention"]

_PATCHED = "_tomviz_llm_patched"


@dataclass
class FastVRequest:
    """Drop visual tokens inside the LLM."""

    layer: int  # K: layers K.. see only the kept tokens (the attention is read in layer K-1)
    keep: int  # visual tokens kept
    select: Callable[[torch.Tensor], torch.Tensor]  # attention [1, V] → kept visual indices [k] (ascending)
    query: int = -1  # the prefill position whose attention decides: the last prompt token (-1: the last position)
    # HoliTom's inner merge: (hidden [V, C] of the visual tokens entering layer K, kept [k] visual indices ascending)
    # → (folded [k, C], dst [V] index into kept): the dropped tokens fold into the kept ones first; None: FastV drops
    fold: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None


@dataclass
class DyCokeRequest:
    """DyCoke's decode-time cache pruning (:mod:`tomviz.merge.dycoke_cache`): at each decoding step, layer
    ``layer - 1``'s attention of the new token to the visual tokens decides (``select``) which of them layers
    ``>= layer`` attend to in this step (the others are masked; the cache keeps them)."""

    layer: int  # l
    select: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor | None]  # (attention [V], previous) → kept or None
    # filled during the call
    previous: torch.Tensor | None = None  # [V] the last step's attention
    steps: list[torch.Tensor | None] = field(default_factory=list)  # per decoding step: kept visual indices, None: all


@dataclass
class AIMRequest:
    """AIM's PageRank pruning inside the LLM (:mod:`tomviz.merge.aim`), by masking: after each prefill layer
    whose retain rate is below 1, the layer's attention logits (recomputed, causal and pruning mask added)
    give each token a PageRank importance, and the visual tokens outside the ``int(V * rate)`` best are
    masked out of every later layer's keys (prefill and decoding); they keep their places, positions and
    cache entries, and their rows still vote in the next rounds. Text tokens are never pruned. With ``drop``
    they are removed instead, as FastV's are (the rest keep their positions; later layers' caches hold only
    them), and no longer vote."""

    rates: list[float]  # [num_layers] fraction of the original visual tokens kept after each layer (aim.retain_rates)
    length: int | None = None  # rank only the first ``length`` positions (the prompt; teacher forcing); None: all
    drop: bool = False  # remove the pruned tokens (hidden states, positions, cache) instead of masking them


@dataclass
class LLMState(PerCallState, context="tomviz_llm_state"):
    """Per-call state of the language model (batch 1). Sequence positions index the prefill tokens.
    ``with state:`` makes it the current one for the patched decoder layers."""

    visual: torch.Tensor  # [L] bool, the visual tokens of the prefill sequence
    key_bias: torch.Tensor | None = None  # [L] or [B, L] float, added to every attention logit towards that key (log size; 0 = text)
    fastv: FastVRequest | None = None
    record_queries: torch.Tensor | None = None  # [Q] long: record these queries' attention (one pass, no cache)
    vtu: VirtualTokens | None = None  # DyMU's virtual token unmerging in every prefill attention
    aim: AIMRequest | None = None  # AIM's PageRank pruning (masking)
    # filled during the call
    keep: torch.Tensor | None = None  # [L'] long, prefill positions that layers >= K keep (FastV)
    last_attention: torch.Tensor | None = None  # [L] attention of the last prompt token in layer K-1 (mean over heads)
    attention: list[torch.Tensor] = field(default_factory=list)  # per layer [Q, L_l], mean over heads
    active: list[torch.Tensor] = field(default_factory=list)  # AIM: per layer [L] bool, the keys left after it
    mustdrop: MustDropRequest | None = None  # MustDrop's filtering and cache eviction (filled during the call)
    dycoke: DyCokeRequest | None = None  # DyCoke's decode-time cache pruning (filled during the call)
    folded: torch.Tensor | None = None  # [V] HoliTom's inner merge: the kept visual token each visual token joined


def current_state() -> LLMState | None:
    """The language model's state of this call, or None."""
    return LLMState.current()


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
    return layer_logits(layer, hidden, position_embeddings, queries, key_bias).softmax(-1).mean(1)[0]


def layer_logits(
    layer: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    queries: torch.Tensor,
    key_bias: torch.Tensor | None,
) -> torch.Tensor:
    """The pre-softmax attention logits of ``queries`` inside ``layer`` (scaled, causal ``-inf`` and
    ``key_bias`` added), per head: ``[1, H, Q, L]`` float32. Arguments as :func:`layer_attention`."""
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
    return logits.masked_fill(future, -torch.inf)


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
        keep = _entering(state, index, prefill)  # the prefill positions whose tokens enter this layer (None: all)
        dropped = keep is not None
        mask = kwargs.get("attention_mask")
        key_bias = state.key_bias
        if dropped:
            if prefill:
                previous = _entering(state, index - 1) if index > 0 else None
                hidden_states = _fold(hidden_states, state, index)
                if previous is None or not torch.equal(previous, keep):  # this layer drops more
                    hidden_states = hidden_states[:, keep if previous is None else torch.searchsorted(previous, keep)]
                cos, sin = kwargs["position_embeddings"]
                at = keep if state.mustdrop is None else torch.arange(len(keep), device=keep.device)  # MustDrop renumbers
                kwargs["position_embeddings"] = (cos[:, at], sin[:, at])
                if kwargs.get("position_ids") is not None:
                    kwargs["position_ids"] = kwargs["position_ids"][:, at]
                if mask is not None:
                    mask = _slice_keys(mask, keep, prefix).index_select(-2, keep)
            elif mask is not None:
                mask = _slice_keys(mask, keep, prefix)
            if key_bias is not None:
                key_bias = key_bias[..., keep]
        if state.aim is not None:
            key_bias = _aim_step(self, index, state, hidden_states, kwargs.get("position_embeddings"), key_bias, prefill, keep)
        if state.mustdrop is not None:
            _mustdrop_step(self, index, state.mustdrop, hidden_states, kwargs, keep, prefill, prefix)
        key_bias = _dycoke_bias(state, index, prefill, key_bias)
        if prefill:
            _record_and_rank(self, index, state, hidden_states, kwargs["position_embeddings"], key_bias, keep)
        if key_bias is not None:
            q_len = hidden_states.shape[1]
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = cache.get_seq_length(self.self_attn.layer_idx) if cache is not None else 0
            mask = _bias_mask(mask, key_bias, q_len, past + q_len, hidden_states.dtype)
        if "attention_mask" in kwargs or mask is not None:
            kwargs["attention_mask"] = mask
        out = original(hidden_states, *args, **kwargs)
        if not prefill and state.dycoke is not None and index == state.dycoke.layer - 1:
            _dycoke_step(self, state, hidden_states, kwargs, key_bias)
        return out

    return types.MethodType(forward, layer)


def _record_and_rank(layer: nn.Module, index: int, state: LLMState, hidden: torch.Tensor,
                     position_embeddings: tuple[torch.Tensor, torch.Tensor], key_bias: torch.Tensor | None,
                     keep: torch.Tensor | None) -> None:
    """In a prefill layer: record the attention of ``state.record_queries`` (``state.attention``) and, in FastV's
    layer K-1, rank the visual tokens by the last prompt token's attention (``state.keep``), from one
    :func:`layer_attention` call (the keys once). hidden: ``[1, L_l, C]``; keep: ``[L_l]`` the prefill positions
    entering this layer (None: all)."""
    fastv = state.fastv
    record = state.record_queries is not None and state.vtu is None  # (VTU records in vtu_attention)
    rank = fastv is not None and index == fastv.layer - 1
    if not (record or rank):
        return
    queries = hidden.new_zeros(0, dtype=torch.long)
    if record:
        queries = state.record_queries if keep is None else torch.searchsorted(keep, state.record_queries)
    if rank:
        queries = torch.cat([queries, queries.new_tensor([fastv.query % hidden.shape[1]])])
    probs = layer_attention(layer, hidden, position_embeddings, queries, key_bias)  # [Q (+1), L_l]
    if rank:
        probs, state.last_attention = probs[:-1], probs[-1]
        visual_index = state.visual.nonzero()[:, 0]  # [V]
        kept_visual = visual_index[fastv.select(state.last_attention[visual_index][None])]
        state.keep = torch.cat([(~state.visual).nonzero()[:, 0], kept_visual]).sort().values
    if record:
        if keep is not None:  # back onto the prefill positions; dropped keys get 0
            probs = probs.new_zeros(probs.shape[0], state.visual.shape[0]).index_copy_(1, keep, probs)
        state.attention.append(probs)


def _entering(state: LLMState, index: int, prefill: bool = True) -> torch.Tensor | None:
    """``[K]`` ascending: the prefill positions whose tokens enter layer ``index`` when tokens were dropped before
    it (FastV from layer K; AIM with ``drop``; MustDrop after its pruning layers, and while decoding the positions
    the layer's cache holds); None: every position."""
    if state.mustdrop is not None:
        return state.mustdrop.entering(index, prefill)
    if state.fastv is not None:
        return state.keep if index >= state.fastv.layer else None
    if state.aim is None or not state.aim.drop or not 0 < index <= len(state.active):
        return None
    entering = state.active[index - 1]
    return None if bool(entering.all()) else entering.nonzero()[:, 0]


def _fold(hidden: torch.Tensor, state: LLMState, index: int) -> torch.Tensor:
    """HoliTom's inner merge at layer K (elsewhere ``hidden`` as it is): the visual rows of ``hidden`` ``[1, L, C]``
    (the whole prefill) with the dropped ones folded into the kept ones (``state.fastv.fold``); ``state.folded``
    records where each went."""
    if state.fastv is None or state.fastv.fold is None or index != state.fastv.layer:
        return hidden
    visual_index = state.visual.nonzero()[:, 0]  # [V]
    kept = torch.searchsorted(visual_index, state.keep[state.visual[state.keep]])  # [k] kept visual indices
    folded, state.folded = state.fastv.fold(hidden[0, visual_index], kept)
    hidden = hidden.clone()
    hidden[0, visual_index[kept]] = folded.to(hidden.dtype)
    return hidden


def _dycoke_step(layer: nn.Module, state: LLMState, hidden: torch.Tensor, kwargs: dict,
                 key_bias: torch.Tensor | None) -> None:
    """DyCoke in layer ``l - 1`` of a decoding step: the new token's attention (recomputed: its query against the
    keys this layer's cache holds, the new one included; mean over heads) to the visual tokens decides this step's
    kept visual tokens (``state.dycoke.steps``)."""
    request = state.dycoke
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    attn = layer.self_attn
    keys = cache.layers[attn.layer_idx].keys  # [1, Hkv, S, d] rotated
    h = layer.input_layernorm(hidden)
    q = attn.q_proj(h).view(1, 1, -1, attn.head_dim).transpose(1, 2)  # [1, H, 1, d]
    if hasattr(attn, "q_norm"):
        q = attn.q_norm(q)
    cos, sin = kwargs["position_embeddings"]
    q, _ = _rotary(attn)(q, q, cos, sin)
    keys = keys.repeat_interleave(q.shape[1] // keys.shape[1], dim=1)
    logits = (q @ keys.transpose(-1, -2)).float() * attn.scaling  # [1, H, 1, S]
    if key_bias is not None:
        logits[..., : key_bias.shape[-1]] += key_bias.float()
    probs = logits.softmax(-1).mean(1)[0, 0]  # [S]
    attention = probs[: state.visual.shape[0]][state.visual]  # [V]
    request.steps.append(request.select(attention, request.previous))
    request.previous = attention


def _dycoke_bias(state: LLMState, index: int, prefill: bool, key_bias: torch.Tensor | None) -> torch.Tensor | None:
    """In a decoding step's layers ``>= l`` that DyCoke prunes: ``[L]`` the key bias with the visual tokens this step
    left out masked; elsewhere ``key_bias`` as it is."""
    request = state.dycoke
    if prefill or request is None or index < request.layer or not request.steps or request.steps[-1] is None:
        return key_bias
    visual_index = state.visual.nonzero()[:, 0]
    masked = torch.full((visual_index.numel(),), torch.finfo(torch.float32).min, device=visual_index.device)
    masked[state.dycoke.steps[-1]] = 0.0
    bias = torch.zeros(state.visual.shape[0], device=visual_index.device).index_copy_(0, visual_index, masked)
    return bias if key_bias is None else key_bias + bias


def _mustdrop_step(layer: nn.Module, index: int, request: MustDropRequest, hidden: torch.Tensor, kwargs: dict,
                   held: torch.Tensor | None, prefill: bool, prefix: int) -> None:
    """MustDrop in layer ``index``. Prefill, at a pruning layer: the attention of the text after the image to the
    image (recomputed from the layer's input ``hidden``, which holds the positions ``held``) filters the visual
    tokens for the later layers. Decoding: the first time, the caches are evicted; every layer whose cache was cut
    gives the new token the position equal to its cache length (``kwargs``' rotary replaced)."""
    if prefill:
        if index in request.layers:
            rows, num_visual = request.text_rows(held, hidden.shape[1])
            probs = layer_logits(layer, hidden, kwargs["position_embeddings"], rows, None).softmax(-1)[0]  # [H, T, L]
            request.filter(probs, held, num_visual, prefix)
        return
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if held is None or cache is None:
        return
    if not request.evicted:
        request.evict(cache)
    position = cache.get_seq_length(layer.self_attn.layer_idx)
    kwargs["position_embeddings"] = request.decode_rotary(hidden, position)
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = torch.full_like(kwargs["position_ids"], position)


def _aim_step(layer: nn.Module, index: int, state: LLMState, hidden: torch.Tensor,
              position_embeddings: tuple[torch.Tensor, torch.Tensor] | None, key_bias: torch.Tensor | None,
              prefill: bool, positions: torch.Tensor | None) -> torch.Tensor | None:
    """AIM in layer ``index``: masking, the key bias with the keys pruned before it masked (dropping: they are gone
    already); in the prefill, the keys left after it (``state.active``), ranked by
    :func:`tomviz.merge.aim.pagerank_scores` of this layer's logits over the tokens ``hidden`` holds (``positions``,
    None: all) when its retain rate is below 1: the only layers whose logits are recomputed."""
    prefix = state.visual.shape[0]
    device = hidden.device
    if prefill and index == 0:
        state.active = []
    entering = state.active[index - 1] if index > 0 else torch.ones(prefix, dtype=torch.bool, device=device)
    if not state.aim.drop and not bool(entering.all()):  # (nothing pruned yet: the model's own causal mask)
        pruned = torch.zeros(prefix, device=device).masked_fill(~entering, torch.finfo(torch.float32).min)
        key_bias = pruned if key_bias is None else key_bias + pruned
    if not prefill:
        return key_bias
    leaving = entering
    if state.aim.rates[index] < 1.0 and bool((entering & state.visual).any()):  # (no visual token left: nothing to rank)
        positions = torch.arange(prefix, device=device) if positions is None else positions
        length = state.aim.length or prefix
        rows = int((positions < length).sum())  # the prompt's tokens among those held
        bias = None if key_bias is None else key_bias[..., :rows]
        logits = layer_logits(layer, hidden[:, :rows], _first(position_embeddings, rows),
                              torch.arange(rows, device=device), bias)  # [1, H, rows, rows]
        scores = torch.full((prefix,), -1.0, device=device).index_copy_(0, positions[:rows], aim.pagerank_scores(logits)[0])
        later = torch.arange(prefix, device=device) >= length  # teacher-forced answer tokens: never ranked, kept
        kept = aim.keep_mask(scores[None], (entering & ~later)[None], ~state.visual[None], state.aim.rates[index])[0]
        leaving = kept | (entering & later)
    state.active.append(leaving)
    return key_bias


def _first(position_embeddings: tuple[torch.Tensor, torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = position_embeddings
    return cos[:, :length], sin[:, :length]


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
