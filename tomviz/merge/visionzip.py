"""VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models",
CVPR 2025) as its authors' code does it: pure tensor math, no model knowledge.

Reproduces dvlab-research/VisionZip @3151f6d, ``visionzip/clip_encoder.py``
``CLIPVisionTower_VisionZip.forward`` with the key metric of ``visionzip/utils.py``
``CLIPAttention_forward`` (``raw_key_states.mean(1)``) and the counts of ``visionzip/main.py``
``visionzip``. Everything is read from encoder layer -2 (the layer whose output LLaVA feeds its
projector): its attention probabilities, its keys and its output hidden states.

Per crop (batch element ``b`` = one crop or image; every crop gets the same budget):

1. **Dominant tokens**: the CLS token plus the ``dominant - 1`` patches with the largest CLS
   attention summed over heads (``torch.topk``), kept in input order (CLS first). ``dominant``
   counts the CLS token, as ``visionzip(model, dominant=..)`` does (it passes ``dominant - 1`` on).
2. **Contextual tokens**: the ``R = N - dominant`` other tokens, keys averaged over heads and
   L2-normalised. Targets: the tokens at rank ``0, s, 2s, ..`` among them (``s = max(1, R // c)``,
   integer), the first ``c``. Every other token joins the target with the highest cosine
   (``argmax``: ties to the lower target). Contextual token ``j`` = target ``j`` **plus** the mean of
   the tokens assigned to it (the target itself is not in the mean; an empty group adds 0).
3. Output: ``[dominant tokens, contextual tokens]``, before the projector.

The values follow that rule, which is not a mean of the group, so :class:`VisionZipResult` carries
them beside the partition (a :class:`~tomviz.merge.plan.MergePlan` whose ``merge`` would give group
means, for a Trace's groups and sizes, not for the values).

Defaults: 54 dominant + 10 contextual = 64 tokens per crop, the README's setting
(``visionzip(model, dominant=54, contextual=10)``); the function's own defaults are 191 + 30
(:data:`ORIGINAL_DOMINANT`, :data:`ORIGINAL_CONTEXTUAL`).

Deliberate differences: the key norm is clamped at the smallest float (the original divides by
zero and gives NaN for an all-zero key); ``dominant + contextual > N`` raises a ValueError (the
original fails on a shape mismatch); the original runs under the vision tower's dtype, this code
in the dtype it is given.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tomviz.merge.plan import MergePlan

DOMINANT = 54  # README: "VisionZip retains 54 dominant tokens and 10 contextual tokens"
CONTEXTUAL = 10
ORIGINAL_DOMINANT = 191  # visionzip/main.py visionzip(model, dominant=191, contextual=30)
ORIGINAL_CONTEXTUAL = 30


@dataclass(frozen=True)
class VisionZipResult:
    """One VisionZip selection over ``B`` crops of ``N`` tokens (CLS first)."""

    hidden: torch.Tensor  # [B, d + c, D] dominant tokens (input order, CLS first), then contextual tokens
    plan: MergePlan  # [B, N] → d + c outputs: the partition (token → output slot), nothing pruned
    dominant_index: torch.Tensor  # [B, d] input index of each dominant token, ascending (0 = CLS)
    target_index: torch.Tensor  # [B, c] input index of each contextual target


def cls_attention_sum(attention: torch.Tensor) -> torch.Tensor:
    """The CLS row summed over heads, without CLS's own column.

    attention: ``[B, H, N, N]`` probabilities, or the CLS rows ``[B, H, N]``. Returns ``[B, N - 1]``
    (patch ``i`` of the result is token ``i + 1``).
    """
    if attention.dim() == 4:
        attention = attention[:, :, 0]
    if attention.dim() != 3:
        raise ValueError(f"attention must be [B, H, N, N] or the CLS rows [B, H, N], got {tuple(attention.shape)}")
    return attention[:, :, 1:].sum(dim=1)


def head_mean(keys: torch.Tensor) -> torch.Tensor:
    """Keys ``[B, H, N, d]`` averaged over heads → ``[B, N, d]``; ``[B, N, C]`` is returned as is."""
    return keys.mean(dim=1) if keys.dim() == 4 else keys


def dominant_mask(cls_scores: torch.Tensor, dominant: int) -> torch.Tensor:
    """``[B, N]`` bool: CLS and the ``dominant - 1`` patches with the largest score (``torch.topk``).

    cls_scores: ``[B, N - 1]`` (from :func:`cls_attention_sum`).
    """
    batch, num_patches = cls_scores.shape
    top = cls_scores.topk(dominant - 1, dim=1).indices + 1  # [B, d - 1] token indices
    mask = torch.zeros(batch, num_patches + 1, dtype=torch.bool, device=cls_scores.device)
    mask[:, 0] = True
    return mask.scatter_(1, top, True)


def target_ranks(num_rest: int, contextual: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[c]`` ranks (among the non-dominant tokens) of the contextual targets: step ``max(1, R // c)``."""
    step = max(1, num_rest // contextual)
    return torch.arange(0, num_rest, step, device=device)[:contextual]


def _check_counts(num_tokens: int, dominant: int, contextual: int) -> None:
    if dominant < 1 or contextual < 0:
        raise ValueError(f"VisionZip needs dominant >= 1 (it counts CLS) and contextual >= 0, got {dominant}, {contextual}")
    if dominant + contextual > num_tokens:
        raise ValueError(f"VisionZip cannot keep {dominant} + {contextual} of {num_tokens} tokens")


def visionzip(
    hidden: torch.Tensor,
    attention: torch.Tensor,
    keys: torch.Tensor,
    dominant: int = DOMINANT,
    contextual: int = CONTEXTUAL,
) -> VisionZipResult:
    """VisionZip on encoder layer -2's tensors, per crop.

    hidden: ``[B, N, D]`` layer -2's output hidden states (CLS first; B = crops).
    attention: ``[B, H, N, N]`` layer -2's attention probabilities, or its CLS rows ``[B, H, N]``.
    keys: layer -2's keys ``[B, N, C]`` already averaged over heads, or ``[B, H, N, d]``.
    dominant: tokens kept as they are, CLS included; contextual: merged tokens added.
    """
    batch, num_tokens, width = hidden.shape
    _check_counts(num_tokens, dominant, contextual)
    keep = dominant_mask(cls_attention_sum(attention), dominant)  # [B, N]
    dominant_index = keep.nonzero()[:, 1].view(batch, dominant)  # [B, d] ascending
    rest_index = (~keep).nonzero()[:, 1].view(batch, num_tokens - dominant)  # [B, R] ascending
    slot = torch.empty(batch, num_tokens, dtype=torch.long, device=hidden.device)
    slot.scatter_(1, dominant_index, torch.arange(dominant, device=hidden.device).expand(batch, -1))
    dominant_hidden = hidden.gather(1, dominant_index[..., None].expand(-1, -1, width))  # [B, d, D]
    if contextual == 0:
        plan = MergePlan(dst=slot.scatter_(1, rest_index, -1), num_out=dominant)
        return VisionZipResult(dominant_hidden, plan, dominant_index, rest_index[:, :0])
    contextual_hidden, assigned, target_index = _contextual(hidden, head_mean(keys), rest_index, contextual)
    slot.scatter_(1, rest_index, dominant + assigned)
    plan = MergePlan(dst=slot, num_out=dominant + contextual)
    return VisionZipResult(torch.cat([dominant_hidden, contextual_hidden], dim=1), plan, dominant_index, target_index)


def _contextual(
    hidden: torch.Tensor, keys: torch.Tensor, rest_index: torch.Tensor, contextual: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contextual tokens of the non-dominant tokens ``rest_index`` ``[B, R]``.

    Returns (``[B, c, D]`` target + mean of its assigned tokens, ``[B, R]`` the target (0..c-1) of each
    non-dominant token, ``[B, c]`` the targets' input indices).
    """
    batch, num_rest = rest_index.shape
    width = hidden.shape[-1]
    rest_keys = keys.gather(1, rest_index[..., None].expand(-1, -1, keys.shape[-1]))  # [B, R, C]
    rest_keys = rest_keys / rest_keys.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(rest_keys.dtype).tiny)
    rest_hidden = hidden.gather(1, rest_index[..., None].expand(-1, -1, width))  # [B, R, D]
    targets = target_ranks(num_rest, contextual, hidden.device)  # [c]
    is_target = torch.zeros(num_rest, dtype=torch.bool, device=hidden.device)
    is_target[targets] = True
    similarity = rest_keys[:, ~is_target] @ rest_keys[:, targets].transpose(1, 2)  # [B, R - c, c]
    choice = similarity.argmax(dim=2)  # [B, R - c]
    one_hot = torch.zeros(batch, num_rest - contextual, contextual, dtype=hidden.dtype, device=hidden.device)
    one_hot.scatter_(2, choice[..., None], 1)
    counts = one_hot.sum(dim=1).clamp(min=1)[..., None]  # [B, c, 1]
    mean_assigned = one_hot.transpose(1, 2) @ rest_hidden[:, ~is_target] / counts  # [B, c, D]
    assigned = torch.empty(batch, num_rest, dtype=torch.long, device=hidden.device)
    assigned[:, targets] = torch.arange(contextual, device=hidden.device)
    assigned[:, ~is_target] = choice
    return rest_hidden[:, targets] + mean_assigned, assigned, rest_index[:, targets]
