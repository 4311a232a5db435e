"""MustDrop (Liu et al., "Multi-Stage Vision Token Dropping: Towards Efficient Multimodal Large
Language Model", arXiv 2411.10803) as its authors' code does it: pure tensor math, no model knowledge.

Read from liuting20/MustDrop @909afa5 (LLaVA-1.5: CLIP ViT-L/14-336, 24 layers; LLaMA, 32 layers).
Four stages, one function each:

1. **Local window merging** after the vision encoder's **first** layer (``llava/model/multimodal_encoder/
   local_merge.py`` ``conditional_pooling`` + ``merge_wavg``, called from ``clip_encoder.py``
   ``CLIPVisionModelAcc.custom_forward`` at ``idx == 0``): the patch grid (CLS excluded) is cut into
   non-overlapping 3x3 windows; a window's score is the mean cosine of its 9 tokens over the 72 ordered
   pairs of distinct tokens; ``r`` = the batch minimum of the number of windows scoring >= 0.8; in
   each of the ``r`` best windows (``torch.topk``) the first 8 tokens (row-major) merge into the 9th,
   the bottom-right one, as a plain mean. Output: CLS, the merged windows best first, then the
   unmerged tokens in index order (:func:`local_window_merge`).
2. **Key set** after the encoder's last layer (``custom_forward`` at ``idx == 23``): the top
   ``ceil(0.08 * (N - 1))`` patches by the CLS row of that layer's attention, mean over heads
   (:func:`key_set`); these indices (into the merged patches, which are the LLM's visual tokens) are
   never dropped later.
3. **Dual-attention filtering** in the LLM prefill after layers 2, 6, 10 and 14 (``llava/model/
   language_model/modelling_sparse_llama.py`` ``LlamaDynamicvitModel.forward`` and
   ``dual_attention_filter``): rows = every token after the image, columns = the image tokens, batch
   element 0, mean over heads; a visual token is dropped iff its summed attention is below
   ``global_thr`` times the total **and** its largest attention is below ``individual_thr``; the key
   set always stays. Dropped tokens are removed and the rest get positions renumbered ``0..L'-1``
   (:func:`dual_attention_keep`, :func:`stage_positions`). The authors' scripts use
   (0.001, 0.001), (0.0012, 0.001), (0.011, 0.01) for about 192, 128 and 64 tokens (counts depend on
   the input); the function defaults (1.0, 0.0) drop nothing (:data:`THRESHOLDS`).
4. **KV-cache eviction** at the end of the prefill (same ``forward``): the caches of layers 2..14 keep
   only the tokens that survived the last stage; layers 0 and 1 keep all; later layers already hold the
   final tokens (:func:`cache_keep_indices`). While decoding, the original gives the new token, in
   every layer, the position equal to that layer's cache length (``LlamaDynamicvitSdpaAttention.forward``),
   so layers 0-1 and the others see different positions.

Deliberate differences: the pruning layers and layer count are arguments (the original hard-codes
[2, 6, 10, 14] and 32); the window cosine is computed once per pair with ``F.cosine_similarity``
exactly as the original but over a ``[.., 9, 9]`` layout (same values to float rounding).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tomviz.merge.plan import MergePlan

WINDOW = 3
WINDOW_THRESHOLD = 0.8  # custom_forward: conditional_pooling(hidden_states, 0.8, (3, 3))
KEY_RATE = 0.08  # custom_forward: self.keep_rate = 0.08
PRUNING_LAYERS = (2, 6, 10, 14)  # LlamaDynamicvitModel.pruning_layers
THRESHOLDS = {  # (global_thr, individual_thr): scripts/v1_5/eval/textvqa_{192,128,64}.sh; None = function defaults
    192: (0.001, 0.001),
    128: (0.0012, 0.001),
    64: (0.011, 0.01),
    None: (1.0, 0.0),
}


def window_tokens(rows: int, cols: int, window: int = WINDOW, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[W, window**2]`` patch indices of each window, windows row-major, tokens row-major inside."""
    if rows % window or cols % window:
        raise ValueError(f"MustDrop's {window}x{window} windows need a grid divisible by {window}, got {rows}x{cols}")
    grid = torch.arange(rows * cols, device=device).view(rows // window, window, cols // window, window)
    return grid.permute(0, 2, 1, 3).reshape(-1, window * window)


def window_similarity(patches: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Mean cosine over the ordered pairs of distinct tokens of each window.

    patches: ``[B, N, D]``; members: ``[W, k]`` (:func:`window_tokens`). Returns ``[B, W]``.
    """
    tokens = patches[:, members]  # [B, W, k, D]
    k = members.shape[1]
    sims = F.cosine_similarity(tokens.unsqueeze(3), tokens.unsqueeze(2), dim=-1)  # [B, W, k, k]
    sims = sims * (1 - torch.eye(k, device=patches.device))
    return sims.sum(-1).sum(-1) / (k * (k - 1))


def local_window_merge(
    hidden: torch.Tensor, threshold: float = WINDOW_THRESHOLD, window: int = WINDOW
) -> tuple[torch.Tensor, MergePlan]:
    """Stage 1. hidden: ``[B, 1 + N, D]`` (CLS first, a square patch grid).

    Returns (``[B, 1 + N - r (k - 1), D]`` merged tokens, the plan over the ``1 + N`` inputs). The plan's
    own ``merge(hidden, None)`` gives the same values (each window the plain mean of its ``k`` tokens).
    """
    batch, num_tokens, _ = hidden.shape
    side = math.isqrt(num_tokens - 1)
    if side * side != num_tokens - 1:
        raise ValueError(f"MustDrop's window merging needs a square patch grid, got {num_tokens - 1} patches")
    members = window_tokens(side, side, window, hidden.device)  # [W, k]
    score = window_similarity(hidden[:, 1:], members)  # [B, W]
    r = int((score >= threshold).sum(dim=1).min())
    chosen = score.topk(r, dim=-1).indices  # [B, r] windows, best first
    k = members.shape[1]
    merged = torch.zeros(batch, num_tokens - 1, dtype=torch.bool, device=hidden.device)
    merged.scatter_(1, members[chosen].view(batch, -1), True)  # [B, N] patches inside a chosen window
    dst = torch.empty(batch, num_tokens - 1, dtype=torch.long, device=hidden.device)
    dst.scatter_(1, members[chosen].view(batch, -1), (1 + torch.arange(r, device=hidden.device)).repeat_interleave(k).expand(batch, -1))
    rest = (~merged).long().cumsum(1) + r  # [B, N] 1 + r + rank among the unmerged
    dst = torch.where(merged, dst, rest)
    dst = torch.cat([torch.zeros(batch, 1, dtype=torch.long, device=hidden.device), dst], dim=1)  # CLS → 0
    plan = MergePlan(dst=dst, num_out=num_tokens - r * (k - 1))
    return plan.merge(hidden, None)[0], plan


def key_set(attention: torch.Tensor, rate: float = KEY_RATE) -> torch.Tensor:
    """Stage 2. attention: the encoder's last layer ``[B, H, N, N]`` (or the CLS rows ``[B, H, N]``).
    Returns ``[B, ceil(rate (N - 1))]`` patch indices (0 = the first patch), ``torch.topk`` order."""
    rows = attention[:, :, 0] if attention.dim() == 4 else attention  # [B, H, N]
    cls_attention = rows[:, :, 1:].mean(dim=1)  # [B, N - 1]
    return cls_attention.topk(math.ceil(rate * cls_attention.shape[1]), dim=1, largest=True).indices


def dual_attention_keep(
    attention: torch.Tensor,
    visual_start: int,
    num_visual: int,
    key: torch.Tensor,
    global_thr: float = THRESHOLDS[None][0],
    individual_thr: float = THRESHOLDS[None][1],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 3 at one pruning layer (batch element 0 decides, as the original).

    attention: ``[B, H, L, L]`` probabilities; the image block is ``[visual_start, visual_start + V)``
    and everything after it is text. key: ``[K]`` the key set as indices into the current visual tokens.
    Returns (``[V']`` kept visual indices, ascending; ``[K]`` the key set as indices into them).
    """
    text = attention[0, :, visual_start + num_visual :, visual_start : visual_start + num_visual].mean(dim=0)  # [T, V]
    return dual_attention_filter(text, key, global_thr, individual_thr)


def dual_attention_filter(
    text: torch.Tensor,
    key: torch.Tensor,
    global_thr: float = THRESHOLDS[None][0],
    individual_thr: float = THRESHOLDS[None][1],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 3's rule on the attention of the text after the image to the ``V`` image tokens, mean over heads:
    text ``[T, V]``; key ``[K]``. Returns what :func:`dual_attention_keep` returns."""
    num_visual = text.shape[1]
    total = text.sum(dim=0)  # [V]
    dropped = (total < total.sum() * global_thr) & (text.max(dim=0).values < individual_thr)
    kept = torch.arange(num_visual, device=text.device)[~dropped]
    kept = torch.unique(torch.cat([kept, key]))  # sorted
    return kept, torch.isin(kept, key).nonzero()[:, 0]


def stage_positions(kept_visual: torch.Tensor, visual_start: int, num_visual: int, length: int) -> torch.Tensor:
    """``[L']`` positions (into the stage's input sequence of ``length`` tokens) that stay: the tokens
    before the image, the kept visual tokens, the text after. The survivors are renumbered ``0..L'-1``."""
    device = kept_visual.device
    before = torch.arange(visual_start, device=device)
    after = torch.arange(visual_start + num_visual, length, device=device)
    return torch.cat([before, kept_visual + visual_start, after])


def cache_keep_indices(
    stage_keeps: list[torch.Tensor], pruning_layers: tuple[int, ...] = PRUNING_LAYERS, num_layers: int = 32
) -> list[torch.Tensor | None]:
    """Stage 4. stage_keeps[s]: ``[L_{s+1}]`` the positions kept by stage ``s`` (after layer
    ``pruning_layers[s]``), into that stage's input. Returns, per layer, the indices into that layer's
    cache of the tokens to keep (None = keep the whole cache): layers ``pruning_layers[0]..[-1]`` keep
    only the final survivors, the others keep everything."""
    if len(stage_keeps) != len(pruning_layers):
        raise ValueError(f"{len(stage_keeps)} stages for {len(pruning_layers)} pruning layers")
    final_in = list(stage_keeps)  # final_in[s]: the final survivors as indices into stage s's input
    for s in range(len(final_in) - 1, 0, -1):
        final_in[s - 1] = final_in[s - 1][final_in[s]]
    out: list[torch.Tensor | None] = [None] * num_layers
    stage = 0
    for layer in range(pruning_layers[0], pruning_layers[-1] + 1):
        out[layer] = final_in[stage]
        if layer == pruning_layers[stage]:
            stage += 1
    return out


class MustDrop:
    """The registry's entry for MustDrop (inside the LLM): its stages run where a vision-language model puts
    them (the vision tower's first and last layers, the LLM's pruning layers, its KV cache), with the rules above."""

    name = "mustdrop"
    label = ("MustDrop (3x3 window merging after encoder layer 0, key set from CLS attention, dual-attention "
             "filtering at LLM layers 2/6/10/14, KV-cache eviction)")
