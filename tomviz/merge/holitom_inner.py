"""HoliTom's inner merge (Shao et al., "HoliTom: Holistic Token Merging for Fast Video Large Language
Models", 2025) as its authors' code does it: pure tensor math, no model knowledge.

Reproduces cokeshao/HoliTom @e9b2972, ``holitom/modeling_qwen2.py`` ``Qwen2Model.forward`` (the block run when
``HOLITOM_k`` and ``HOLITOM_r`` are set; the scripts use ``k = 18``, ``r = 0.5``): at LLM layer ``k``, in the
prefill only,

1. take layer ``k - 1``'s attention probabilities, average them over heads, read the last token's row over the
   image block and keep the ``round(L * (1 - r))`` image tokens with the highest value (``torch.topk``), as
   FastV does (:mod:`tomviz.merge.fastv`);
2. fold every dropped image token into the kept one its hidden state is most similar to (cosine of the hidden
   states entering layer ``k``, computed once before any folding), visiting the dropped tokens in index order,
   by a running average: ``kept = (kept + dropped) / 2`` (so a kept token that receives ``m`` tokens ends as
   ``kept / 2^m + sum_i dropped_i / 2^(m - i + 1)``, the later ones weighing more);
3. the kept tokens go on with their original positions; layers ``>= k`` see and cache only them.

Checked beside the original's block (run outside this repository on 198 seeded random inputs, float64): the same
kept positions and bit-identical folded hidden states.

Deliberate differences: the original iterates the kept tokens in ``topk`` order and breaks exact ties of the
similarity by that order; here the kept indices arrive ascending (ties fall to the lower index). The original
treats LLaVA-OneVision's single video newline token as an image token; tomviz keeps it like text.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

HOLITOM_LAYER = 18  # k in the authors' scripts (LLaVA-OneVision-7B, 28 layers)
HOLITOM_RATIO = 0.5  # r in the authors' scripts


def holitom_keep_count(num_visual: int, ratio: float) -> int:
    """Image tokens kept at layer ``k``: ``round(L * (1 - r))`` (Python's round: halves to even)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"HoliTom's inner ratio r must lie in [0, 1], got {ratio}")
    return round(num_visual * (1 - ratio))


def most_similar_kept(hidden: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``[V]`` long: for every token of ``hidden`` ``[V, C]`` the index into ``kept`` ``[k]`` of the kept token
    with the highest cosine similarity (a kept token maps to itself)."""
    similarity = F.normalize(hidden.float(), dim=-1) @ F.normalize(hidden[kept].float(), dim=-1).T  # [V, k]
    target = similarity.argmax(dim=-1)
    target[kept] = torch.arange(kept.numel(), device=kept.device)
    return target


def holitom_fold(hidden: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the dropped tokens into the kept ones (step 2 of the module docstring).

    hidden: ``[V, C]`` the image tokens' hidden states entering layer ``k``; kept: ``[k]`` long, ascending.
    Returns ``(folded [k, C], dst [V])``: the kept tokens after folding, in ``kept``'s order, and the index into
    them that every image token joins."""
    num_visual = hidden.shape[0]
    dst = most_similar_kept(hidden, kept)  # [V]
    dropped = torch.ones(num_visual, dtype=torch.bool, device=hidden.device)
    dropped[kept] = False
    order = dropped.nonzero()[:, 0]  # [V - k] ascending: the order the running average visits them
    targets = dst[order]
    received = torch.bincount(targets, minlength=kept.numel())  # [k] m per kept token
    # rank of each dropped token among those folding into the same kept token (0 = first visited)
    same = targets[None, :] == targets[:, None]  # [D, D]
    rank = torch.tril(same, diagonal=-1).sum(1)  # [D]
    weight = torch.pow(2.0, -(received[targets] - rank).double())  # dropped_i / 2^(m - i + 1), i = rank + 1
    folded = hidden[kept].double() * torch.pow(2.0, -received.double())[:, None]
    folded.index_add_(0, targets, hidden[order].double() * weight[:, None])
    return folded.to(hidden.dtype), dst
