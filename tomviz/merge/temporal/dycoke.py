"""DyCoke's temporal token merging (TTM): pair pruning of adjacent frames before the LLM.

Tao et al., "DyCoke: Dynamic Compression of Tokens for Fast Video Large Language Models" (CVPR 2025).
Reproduces KD-TAO/DyCoke @dd74634 ``llava/model/llava_arch.py``, ``dycole_ttm`` (sic), with the merging
ratio of ``lmms_eval/models/llava_onevision.py`` (``dycoke_k`` = 0.7). The rule:

1. frames form pairs (0, 1), (2, 3), ...; the first of a pair stays whole; the second keeps only the
   ``int((1 - k) * N)`` tokens least similar (cosine) to the same position in the first;
2. then, for ``i`` in ``range(0, T - 4, 4)``, frame ``i + 2`` is pruned the same way against frame ``i``
   (replacing its whole-frame entry of step 1);
3. output frame by frame; within a pruned frame, the kept tokens come in order of increasing similarity
   (the order of ``topk(largest=False)``), as the original concatenates them.

Nothing is averaged: a pruned token is dropped (``PRUNED``), though its same-position token in the
reference frame carries the information the authors deem redundant. Quirks kept: with an odd number of
frames the last frame is dropped whole (step 1's pairs never reach it), and with 32 frames frame 30 is never
pruned by step 2. Deliberate differences: the original runs on LLaVA-OneVision's pooled, projected SigLIP
features, here on any per-frame tokens; with fewer than 5 frames the original raises (``torch.stack`` of
an empty list in step 2), here step 2 simply has nothing to do, and a single frame stays whole (the
odd-last-frame rule would leave nothing). Checked beside the original function (run outside this
repository) on 177 seeded random clips of 5 to 33 frames: identical kept tokens, in order. The decoding stage (KV-cache pruning at layer
3 by attention) happens inside the LLM and is not here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tomviz.merge.plan import PRUNED
from tomviz.merge.temporal.base import TemporalReduction, check_ratio, check_tokens


def dycoke(tokens: torch.Tensor, merging_ratio: float = 0.7) -> TemporalReduction:
    """DyCoke's TTM. tokens: ``[T, N, C]``; ``merging_ratio`` is the share of a pruned frame removed."""
    num_frames, per_frame, _ = check_tokens(tokens)
    keep_count = int((1 - check_ratio("merging_ratio", merging_ratio)) * per_frame)
    everything = torch.arange(per_frame, device=tokens.device)
    kept: dict[int, torch.Tensor] = {0: everything}  # frame -> positions kept, in output order
    for first in range(0, num_frames - 1, 2):
        kept[first] = everything
        kept[first + 1] = _least_similar(F.normalize(tokens[first], dim=1), F.normalize(tokens[first + 1], dim=1), keep_count)
    for first in range(0, num_frames - 4, 4):  # the original normalises in step 1 only: same cosine, rounding aside
        kept[first + 2] = _least_similar(tokens[first], tokens[first + 2], keep_count)
    group = torch.full((num_frames * per_frame,), PRUNED, dtype=torch.long, device=tokens.device)
    position = torch.cat([frame * per_frame + kept[frame] for frame in sorted(kept)])  # [M]
    group[position] = torch.arange(position.numel(), device=tokens.device)
    return TemporalReduction(tokens.flatten(0, 1)[position], group, position, num_frames, per_frame)


def _least_similar(reference: torch.Tensor, frame: torch.Tensor, count: int) -> torch.Tensor:
    """``[count]`` positions of ``frame`` ``[N, C]`` least cosine-similar to the same position of
    ``reference``, least similar first."""
    similarity = F.cosine_similarity(reference, frame, dim=1)  # [N]
    return similarity.topk(count, largest=False).indices
