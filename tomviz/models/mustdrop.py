"""Where MustDrop's stages run in a vision-language model (the rules: :mod:`tomviz.merge.mustdrop`).

* Vision tower (:class:`VisionRun`, :func:`apply_vision`): a forward pre-hook on the encoder's block 1 merges
  the output of block 0 in 3x3 windows (stage 1); a forward pre-hook on the last block's ``self_attn``
  takes the CLS row of its attention, mean over heads, and picks the key set (stage 2). The hooks stay on
  the tower and act only while a call's :class:`VisionRun` is entered (a ``ContextVar``), so one model
  serves concurrent callers.
* Language model (:class:`MustDropRequest`, read by the patched decoder layers of :mod:`tomviz.models.llm`):
  dual-attention filtering at the pruning layers of the prefill, renumbered positions (stage 3), and at the
  end of the prefill the KV-cache eviction; while decoding, every layer from the first pruning layer on gives
  the new token the position equal to its own cache length (stage 4).

As liuting20/MustDrop @909afa5 does it: ``llava/model/multimodal_encoder/clip_encoder.py``
``CLIPVisionModelAcc.custom_forward`` (``idx == 0``: ``conditional_pooling`` + ``merge_wavg``, no sizes carried;
``idx == 23``: the key set) and ``llava/model/language_model/modelling_sparse_llama.py``
``LlamaDynamicvitModel.forward`` / ``LlamaDynamicvitSdpaAttention.forward``. Deliberate differences: the
attention rows are recomputed in float32 from the layer's input (SDPA stays the kernel; the original asks
its attention for weights); the pruning layers are an option (the original hard-codes 2, 6, 10, 14).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tomviz.merge import mustdrop
from tomviz.merge.context import PerCallState
from tomviz.merge.engine import attention_probabilities
from tomviz.merge.plan import MergePlan
from tomviz.models import patching

_HOOKED = "_tomviz_mustdrop_hooks"


@dataclass
class VisionRun(PerCallState, context="tomviz_mustdrop_vision"):
    """One call's MustDrop in the vision tower. ``with run:`` makes the hooks act."""

    threshold: float = mustdrop.WINDOW_THRESHOLD  # a window merges when its mean cosine reaches this
    key_rate: float = mustdrop.KEY_RATE  # the key set: this fraction of the patches
    # filled during the call
    plan: MergePlan | None = None  # [B, 1 + N] → 1 + N' tokens (CLS → 0)
    key: torch.Tensor | None = None  # [B, K] patch indices into the merged patches (CLS excluded)


def _merge_windows(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    run = VisionRun.current()
    if run is None:
        return None
    hidden = args[0] if args else kwargs["hidden_states"]  # [B, 1 + N, C]
    merged, run.plan = mustdrop.local_window_merge(hidden, run.threshold)
    if args:
        return (merged, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": merged}


def _key_set(module: nn.Module, args: tuple, kwargs: dict) -> None:
    run = VisionRun.current()
    if run is None:
        return
    hidden = args[0] if args else kwargs["hidden_states"]  # [B, 1 + N', C] after layer_norm1
    # the CLS row as the engine records it (float32 softmax of the scaled logits): [B, H, 1 + N']
    cls_rows = attention_probabilities(module.q_proj(hidden[:, :1]), module.k_proj(hidden), module.num_heads)[:, :, 0]
    run.key = mustdrop.key_set(cls_rows, run.key_rate)


def apply_vision(vision: nn.Module) -> None:
    """Put the two hooks on ``vision``'s blocks (idempotent, under ``patching.PATCH_LOCK``)."""
    if getattr(vision, _HOOKED, None):
        return
    with patching.PATCH_LOCK:
        if getattr(vision, _HOOKED, None):
            return
        blocks = patching.apply(vision).blocks
        if len(blocks) < 2:
            raise ValueError("MustDrop merges after the vision encoder's first layer: the encoder needs two layers")
        attention = blocks[-1].self_attn
        if not all(hasattr(attention, name) for name in ("q_proj", "k_proj", "num_heads")):
            raise ValueError(f"MustDrop reads the CLS attention of {type(attention).__name__}, which has no q_proj, "
                             "k_proj and num_heads")
        setattr(vision, _HOOKED, [blocks[1].register_forward_pre_hook(_merge_windows, with_kwargs=True),
                                  attention.register_forward_pre_hook(_key_set, with_kwargs=True)])


@dataclass
class MustDropRequest:
    """MustDrop in the language model for one call (batch 1). The image block is ``[visual_start,
    visual_start + num_visual)`` of the prefill; ``key`` ``[K]`` indexes its tokens."""

    visual_start: int
    num_visual: int
    key: torch.Tensor  # [K] the key set: never dropped
    rotary: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # the LLM's rotary_emb(x, position_ids)
    layers: tuple[int, ...] = mustdrop.PRUNING_LAYERS  # filter after these layers' attention
    global_thr: float = mustdrop.THRESHOLDS[192][0]
    individual_thr: float = mustdrop.THRESHOLDS[192][1]
    length: int | None = None  # the prompt's length: the rows of the filter (teacher forcing appends an answer)
    # filled during the call: per pruning layer [L_s] the prefill positions left after it (ascending)
    kept: list[torch.Tensor] = field(default_factory=list, init=False)
    _key: torch.Tensor | None = field(default=None, init=False)  # [K] the key set among the current visual tokens
    evicted: bool = field(default=False, init=False)  # the caches were cut (at the first decoding step)

    def entering(self, index: int, prefill: bool) -> torch.Tensor | None:
        """``[L']`` the prefill positions whose tokens enter layer ``index`` (prefill), or that its cache holds
        while decoding (every layer from the first pruning layer: the last stage's survivors); None: all."""
        if not prefill:
            return self.kept[-1] if self.kept and index >= self.layers[0] else None
        done = [s for s, layer in enumerate(self.layers) if layer < index and s < len(self.kept)]
        return self.kept[done[-1]] if done else None

    def text_rows(self, held: torch.Tensor | None, length: int) -> tuple[torch.Tensor, int]:
        """(``[T]`` the rows of the filter among the ``length`` tokens held, current number of visual tokens)."""
        visual = self.num_visual if held is None else int(((held >= self.visual_start) &
                                                           (held < self.visual_start + self.num_visual)).sum())
        prompt = length if self.length is None else (self.length if held is None else int((held < self.length).sum()))
        return torch.arange(self.visual_start + visual, prompt, device=self.key.device), visual

    def filter(self, probs: torch.Tensor, held: torch.Tensor | None, num_visual: int, prefix: int) -> None:
        """Stage 3 at one pruning layer. probs: ``[H, T, L_held]`` the text rows' attention; held: ``[L_held]``
        prefill positions held (None: all ``prefix``)."""
        held = torch.arange(prefix, device=probs.device) if held is None else held
        if not self.kept:
            self._key = self.key.to(probs.device)
        start = self.visual_start
        text = probs.mean(0)[:, start:start + num_visual]  # [T, V]
        kept_visual, self._key = mustdrop.dual_attention_filter(text, self._key, self.global_thr, self.individual_thr)
        stay = mustdrop.stage_positions(kept_visual, start, num_visual, held.shape[0])
        self.kept.append(held[stay])

    def evict(self, cache: Any) -> None:
        """Stage 4, once, at the first decoding step (the original evicts at the end of its prefill): layers
        ``layers[0]..layers[-1]`` keep in their caches only the last stage's survivors (the later layers hold only
        them already; the earlier ones keep all). cache: a transformers ``DynamicCache`` (``.layers[i].keys``
        ``[B, Hkv, L, d]``)."""
        final = self.kept[-1]
        for index in range(self.layers[0], self.layers[-1] + 1):
            held = self.entering(index, prefill=True)
            at = final if held is None else torch.searchsorted(held, final)
            layer = cache.layers[index]
            layer.keys, layer.values = layer.keys[:, :, at], layer.values[:, :, at]
        self.evicted = True

    def decode_rotary(self, like: torch.Tensor, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` ``[1, 1, d]`` at ``position`` (the layer's own cache length)."""
        return self.rotary(like, torch.tensor([[position]], device=like.device))
