"""DyCoke's decode-time KV-cache pruning (Tao et al., "DyCoke: Dynamic Compression of Tokens for Fast Video
Large Language Models", CVPR 2025) as its authors' code does it: pure tensor math, no model knowledge.

Reproduces KD-TAO/DyCoke @dd74634, ``llava/model/language_model/modeling_qwen2.py``:
``PrunableDynamicCache.dycoke_pruning`` / ``update_cache`` and the loop of ``Qwen2Model.forward``
(``dycoke_l = 3``; ``dycoke_p = 0.8`` by default in ``builder.py``, 0.7 in the README's command). At every decoding
step (one new token), at LLM layer ``l``:

1. take layer ``l - 1``'s attention probabilities of the new token, mean over heads, over the image block;
2. compare them with the previous step's by cosine (no previous step: 0);
3. when the cosine is below 0.9, layers ``>= l`` of this step attend only to the ``int(L * (1 - p))`` image
   tokens with the highest attention (every text and generated token stays); the cache itself keeps everything
   (the original gathers the kept keys and values at each attention call);
4. otherwise this step's layers ``>= l`` attend to every image token: the released loop resets its selection
   (``kv_cache = None``) at the layers below ``l`` of every step, so a selection never outlives its step.

Checked beside the original's ``PrunableDynamicCache`` methods (run outside this repository on 1200 decoding steps
of 200 seeded random attention sequences, 530 of them pruning): identical choices at every step.

Deliberate differences: the previous step's attention is kept per call (the original keeps it on a config
object shared by all calls, so the first step of a request compares with the last one of the request before);
the kept keys are masked rather than gathered (the same attention). The original's attention weights exist only
with eager attention (its default flash attention returns none, and the pruning never runs: DyCoke issue #6);
tomviz recomputes them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DYCOKE_LAYER = 3  # l
DYCOKE_PRUNE = 0.8  # p: the share of the image tokens left out
DYCOKE_THRESHOLD = 0.9  # below this cosine the step prunes


def dycoke_keep_count(num_visual: int, prune: float) -> int:
    """``int(L * (1 - p))``, the original's expression (so ``L = 10, p = 0.8`` keeps 1: ``1 - 0.8 < 0.2``)."""
    if not 0.0 <= prune <= 1.0:
        raise ValueError(f"DyCoke's pruning share p must lie in [0, 1], got {prune}")
    return int(num_visual * (1 - prune))


def attention_cosine(current: torch.Tensor, previous: torch.Tensor | None) -> float:
    """Cosine of two ``[V]`` attention patterns; 0 when there is no previous one (the first decoding step)."""
    if previous is None or previous.shape != current.shape:
        return 0.0
    return float(F.cosine_similarity(current.float(), previous.float(), dim=0))


def dycoke_cache_keep(attention: torch.Tensor, previous: torch.Tensor | None, prune: float = DYCOKE_PRUNE,
                      threshold: float = DYCOKE_THRESHOLD) -> torch.Tensor | None:
    """One decoding step's choice: ``[int(V (1 - p))]`` the image tokens layers ``>= l`` attend to, ascending,
    or None (every one). attention: ``[V]`` this step's (step 1), previous: ``[V]`` the last step's or None."""
    if attention_cosine(attention, previous) >= threshold:
        return None
    keep = dycoke_keep_count(attention.shape[0], prune)
    return attention.topk(keep, sorted=False).indices.sort().values
