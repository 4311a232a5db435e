"""FastV's selection (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024) as its
authors' code does it: pure tensor math, no model knowledge.

Reproduces pkunlp-icler/FastV @d165972, ``src/FastV/llava-hf/transformers/src/transformers/models/
llama/modeling_llama.py`` ``LlamaModel.fastv_forward``: at LLM layer ``K`` take layer ``K - 1``'s
attention probabilities, average them over heads, read the last token's row over the image block
``[start, start + V)``, and keep the ``round(V * (1 - r))`` image tokens with the highest value, chosen
by ``torch.topk`` (so ties fall as ``topk`` lets them); the kept tokens stay in sequence order and
keep their original positions (``position_ids = keep_indexs``).

Deliberate difference: the original reads batch element 0 and applies its choice to the whole
batch; here every batch element gets its own choice (equal for a batch of one). ``round`` is
Python's, which rounds halves to even (``V = 729, r = 0.5`` keeps 364, ``V = 5, r = 0.5`` keeps 2).
"""
from __future__ import annotations

import torch


def fastv_keep_count(num_visual: int, ratio: float) -> int:
    """Image tokens FastV keeps: ``round(V * (1 - r))`` (Python's round: halves to even)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"FastV's ratio r must lie in [0, 1], got {ratio}")
    return round(num_visual * (1 - ratio))


def last_token_image_attention(attention: torch.Tensor, start: int, num_visual: int) -> torch.Tensor:
    """The last token's attention to the image block, mean over heads.

    attention: ``[B, H, L, L]`` probabilities of layer ``K - 1``. Returns ``[B, V]``.
    """
    return attention.mean(dim=1)[:, -1, start : start + num_visual]


def fastv_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """``[B, keep]`` the indices of the ``keep`` highest ``scores`` ``[B, V]``, chosen by ``torch.topk`` as
    the original does (so ties fall as ``topk`` lets them), in ascending order."""
    return scores.topk(keep, dim=1).indices.sort(dim=1).values


def fastv_keep_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """``[B, V]`` bool: the ``round(V * (1 - r))`` image tokens with the highest ``scores`` ``[B, V]``
    (:func:`fastv_top`)."""
    top = fastv_top(scores, fastv_keep_count(scores.shape[1], ratio))  # [B, k]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)


def fastv_keep_positions(attention: torch.Tensor, start: int, num_visual: int, ratio: float) -> torch.Tensor:
    """The sequence positions that stay after layer ``K``, ascending: ``[B, L - V + k]``.

    Every token before and after the image block stays; inside it, :func:`fastv_keep_mask` of the last
    token's attention (:func:`last_token_image_attention`). These are also the kept tokens' position ids.
    """
    batch, _, length, _ = attention.shape
    keep = torch.ones(batch, length, dtype=torch.bool, device=attention.device)
    keep[:, start : start + num_visual] = fastv_keep_mask(last_token_image_attention(attention, start, num_visual), ratio)
    return keep.nonzero()[:, 1].view(batch, -1)
