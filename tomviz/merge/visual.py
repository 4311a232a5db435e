"""Reducing the visual tokens a language model receives: pure tensor math, no model knowledge.

A vision-language model hands its LLM ``V`` visual tokens (``T`` tiles of a
``rows x cols`` grid each, tile-major, row-major inside a tile). A
:class:`VisualMethod` decides, once, which of them the LLM gets: it returns a
:class:`~tomviz.merge.plan.MergePlan` over the ``V`` tokens (merged groups are
size-weighted means, -1 = pruned), the same type every encoder method returns.

Methods (from the papers' definitions, not their code; FastV: Chen et al., ECCV 2024; VisionZip: Yang et al., CVPR 2025):

* ``tome``: ToMe's bipartite matching on the tokens' features, repeated until the
  target count is reached (one step removes at most half);
* ``random``: keep a seeded random subset (the baseline that benchmarks find strong);
* ``downsample``: average-pool each tile's grid to a smaller grid (plain downsampling);
* ``fastv``: keep the tokens most attended by the last prompt token (FastV; applied
  inside the LLM at layer K by the LLM adapter, which supplies the attention);
* ``visionzip``: keep the "dominant" tokens (most attention received in the vision
  encoder) and merge the rest into a few "contextual" tokens by feature similarity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from tomviz.merge.base import max_removable
from tomviz.merge.plan import PRUNED, MergePlan
from tomviz.merge.selection import plan_from_assignment, top_k_mask
from tomviz.merge.tome import alternating_proposals, bipartite_plan, plan_from_proposals


@dataclass
class VisualTokens:
    """What a visual method may read (batch B, V visual tokens)."""

    features: torch.Tensor  # [B, V, D] the tokens as the LLM would receive them
    tile_grid: tuple[int, int]  # (rows, cols) of one tile's token grid; V = num_tiles * rows * cols
    num_tiles: int = 1
    attention: torch.Tensor | None = None  # [B, V] attention each token received (encoder's deep layer, or the LLM's last token)
    attention_middle: torch.Tensor | None = None  # [B, V] the same in a middle encoder layer (HiPrune's anchors)
    seed: int = 0


class VisualMethod:
    """Base class: ``plan(tokens, keep)`` → a plan with (about) ``keep`` outputs; subclasses
    implement ``_plan`` (the checks are made here once)."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    needs_attention: ClassVar[bool] = False  # VisualTokens.attention must be given
    needs_grid: ClassVar[bool] = False  # reads the tile grid (or attention pooled onto it): equal tiles only

    def plan(self, tokens: VisualTokens, keep: int) -> MergePlan:
        num_tokens = tokens.features.shape[1]
        if not 1 <= keep <= num_tokens:
            raise ValueError(f"{self.name}: cannot keep {keep} of {num_tokens} visual tokens")
        if self.needs_attention and tokens.attention is None:
            raise ValueError(f"{self.name} needs the attention each visual token received")
        return self._plan(tokens, keep)

    def _plan(self, tokens: VisualTokens, keep: int) -> MergePlan:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def compose(first: MergePlan, second: MergePlan) -> MergePlan:
    """The plan that applies ``first`` then ``second``: ``[B, N]`` → ``second.num_out`` outputs."""
    dst = second.dst.gather(1, first.dst.clamp(min=0))
    return MergePlan(dst=torch.where(first.dst < 0, PRUNED, dst), num_out=second.num_out)


def group_sizes(plan: MergePlan) -> torch.Tensor:
    """``[B, num_out]`` float: input tokens per output token."""
    batch = plan.dst.shape[0]
    out = torch.zeros(batch, plan.num_out + 1, device=plan.dst.device)
    out.scatter_add_(1, torch.where(plan.dst < 0, plan.num_out, plan.dst), torch.ones_like(plan.dst, dtype=out.dtype))
    return out[:, : plan.num_out]


def sequence_order(plan: MergePlan) -> MergePlan:
    """The same grouping with outputs renumbered by their first member (input order), so that
    output ``j`` can sit where its earliest token sat in the LLM's sequence."""
    batch, num_in = plan.dst.shape
    first = plan.reduce_min(torch.arange(num_in, device=plan.dst.device).expand(batch, num_in))  # [B, num_out]
    order = first.argsort(dim=1)  # [B, num_out] old output index, by first member
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(plan.num_out, device=order.device).expand(batch, -1))
    dst = torch.where(plan.dst < 0, PRUNED, rank.gather(1, plan.dst.clamp(min=0)))
    return MergePlan(dst=dst, num_out=plan.num_out)


def bipartite_to(metric: torch.Tensor, keep: int, is_a=None) -> tuple[MergePlan, int]:
    """Repeated bipartite matching until ``keep`` tokens remain. metric: ``[B, V, D]``.
    Returns (the composed plan, the number of steps)."""
    batch, num_tokens, _ = metric.shape
    plan = MergePlan.identity(batch, num_tokens, metric.device)
    sizes = None
    steps = 0
    current = metric
    while current.shape[1] > keep:
        r = min(current.shape[1] - keep, max_removable(current.shape[1], 0))
        if r <= 0:
            break
        split = None if is_a is None else is_a(current.shape[1], steps)
        step = bipartite_plan(current, r, num_protected=0, is_a=split)
        current, sizes = step.merge(current, sizes)
        plan = compose(plan, step)
        steps += 1
    return plan, steps


class ToMeVisual(VisualMethod):
    name = "tome"
    label = "ToMe (bipartite merging of the visual tokens)"

    def _plan(self, tokens: VisualTokens, keep: int) -> MergePlan:
        return bipartite_to(tokens.features.float(), keep)[0]


class DToMeVisual(VisualMethod):
    """DToMe (DyMU's threshold merging) on the visual tokens: repeated bipartite steps, each merging every
    proposal whose cosine similarity exceeds ``threshold``, so the count adapts to the image; ``keep`` is a
    floor (the ratio is the most it may remove). The LLM gets the sizes as a log-size attention bias."""

    name = "dtome"
    label = "DToMe / DyMU (threshold merging of the visual tokens, adaptive count)"

    def __init__(self, threshold: float = 0.9):
        self.threshold = float(threshold)

    def _plan(self, tokens: VisualTokens, keep: int) -> MergePlan:
        current = tokens.features.float()
        batch = current.shape[0]
        plan = MergePlan.identity(batch, current.shape[1], current.device)
        sizes = None
        while current.shape[1] > keep:
            r_max = min(max_removable(current.shape[1], 0), current.shape[1] - keep)
            if r_max <= 0:
                break
            proposals = alternating_proposals(current, 0, None)
            count = int((proposals.top_scores(r_max) > self.threshold).sum(1).min())
            if count == 0:
                break
            step = plan_from_proposals(proposals, count)
            current, sizes = step.merge(current, sizes)
            plan = compose(plan, step)
        return plan

    def __repr__(self) -> str:
        return f"DToMeVisual(threshold={self.threshold})"


class RandomVisual(VisualMethod):
    name = "random"
    label = "Random selection (baseline)"

    def _plan(self, tokens: VisualTokens, keep: int) -> MergePlan:
        batch, num_tokens, _ = tokens.features.shape
        generator = torch.Generator().manual_seed(tokens.seed)
        scores = torch.rand(batch, num_tokens, generator=generator).to(tokens.features.device)
        return plan_from_assignment(top_k_mask(scores, keep))


def downsample_grid(rows: int, cols: int, keep_fraction: float) -> tuple[int, int]:
    """The pooled grid ``(rows', cols')`` closest to ``keep_fraction`` of the tokens, same aspect."""
    scale = math.sqrt(max(keep_fraction, 1e-9))
    return max(1, round(rows * scale)), max(1, round(cols * scale))


class Downsample(VisualMethod):
    """Average-pool each tile's token grid (adaptive bins) to about ``keep`` tokens in all."""

    needs_grid = True
    name = "downsample"
    label = "Plain downsampling (average pooling, baseline)"

    def _plan(self, tokens: VisualTokens, keep: int) -> MergePlan:
        batch, num_tokens, _ = tokens.features.shape
        rows, cols = tokens.tile_grid
        if num_tokens != tokens.num_tiles * rows * cols:
            raise ValueError(f"{num_tokens} visual tokens do not form {tokens.num_tiles} tiles of {rows}x{cols}")
        new_rows, new_cols = downsample_grid(rows, cols, keep / num_tokens)
        device = tokens.features.device
        r = torch.arange(rows, device=device) * new_rows // rows  # [rows] pooled row of each row
        c = torch.arange(cols, device=device) * new_cols // cols
        cell = (r[:, None] * new_cols + c[None, :]).reshape(-1)  # [rows*cols]
        tile = torch.arange(tokens.num_tiles, device=device)[:, None] * (new_rows * new_cols)
        dst = (tile + cell[None, :]).reshape(1, -1).expand(batch, -1)  # [B, V]
        return MergePlan(dst=dst.contiguous(), num_out=tokens.num_tiles * new_rows * new_cols)


class FastV(VisualMethod):
    """Keep the ``keep`` tokens the last prompt token attends to most (FastV, Chen et al. 2024)."""

    name = "fastv"
    label = "FastV (drop the least attended, inside the LLM at layer K)"
    needs_attention = True

    def _plan(self, tokens: VisualTokens, keep: int) -> MergePlan:
        return plan_from_assignment(top_k_mask(tokens.attention.float(), keep))


class VisionZip(VisualMethod):
    """Dominant tokens (most attention received in the encoder) plus ``contextual`` tokens:
    the rest are split into ``contextual`` groups around evenly spaced centres, each token
    joining its most similar centre (cosine of the features)."""

    needs_grid = True
    name = "visionzip"
    label = "VisionZip (dominant + contextual tokens)"
    needs_attention = True

    def __init__(self, contextual_fraction: float = 0.2):
        self.contextual_fraction = float(contextual_fraction)

    def _plan(self, tokens: VisualTokens, keep: int) -> MergePlan:
        batch, num_tokens, _ = tokens.features.shape
        num_context = min(max(1, round(self.contextual_fraction * keep)), keep - 1) if keep > 1 else 0
        dominant = top_k_mask(tokens.attention.float(), keep - num_context)  # [B, V]
        if num_context == 0:
            return plan_from_assignment(dominant)
        rest_rank = (~dominant).long().cumsum(1) - 1  # [B, V] index among the non-dominant tokens
        num_rest = num_tokens - (keep - num_context)
        step = num_rest / num_context
        centre_ranks = (torch.arange(num_context, device=dominant.device) * step).long()  # evenly spaced
        centre = ~dominant & torch.isin(rest_rank, centre_ranks)  # [B, V]
        x = tokens.features.float()
        x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=1e-6)
        sim = x @ x.transpose(1, 2)  # [B, V, V]
        sim = sim.masked_fill(~centre[:, None, :], -torch.inf)
        score, target = sim.max(-1)  # [B, V] best centre of every token
        keep_mask = dominant | centre
        target = torch.where(keep_mask, -1, target)
        return plan_from_assignment(keep_mask, target=target, score=score)

    def __repr__(self) -> str:
        return f"VisionZip(contextual_fraction={self.contextual_fraction})"


def tile_neighbours(chosen: torch.Tensor, grid: tuple[int, int], num_tiles: int) -> torch.Tensor:
    """``[B, V]`` bool: tokens whose cell touches (4-neighbourhood, same tile) a chosen token's cell."""
    rows, cols = grid
    batch = chosen.shape[0]
    cells = chosen.float().view(batch * num_tiles, 1, rows, cols)
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], device=chosen.device).view(1, 1, 3, 3)
    return (torch.nn.functional.conv2d(cells, cross, padding=1) > 0).view(batch, -1)


class HiPruneVisual(VisualMethod):
    """HiPrune (Liu et al. 2025) as in the paper: one selection from the vision encoder's attention.
    ``anchor_fraction`` of the budget: anchors by the middle layer's attention; up to ``buffer_fraction``:
    their grid neighbours (most attended first); the rest: registers by the deep layer's attention."""

    needs_grid = True
    name = "hiprune"
    label = "HiPrune (anchors + buffers + registers, from the encoder's attention)"
    needs_attention = True

    def __init__(self, anchor_fraction: float = 0.25, buffer_fraction: float = 0.5):
        self.anchor_fraction, self.buffer_fraction = float(anchor_fraction), float(buffer_fraction)

    def _plan(self, tokens: VisualTokens, keep: int) -> MergePlan:
        deep = tokens.attention.float()
        middle = deep if tokens.attention_middle is None else tokens.attention_middle.float()
        anchor = top_k_mask(middle, max(1, round(self.anchor_fraction * keep)))
        near = tile_neighbours(anchor, tokens.tile_grid, tokens.num_tiles) & ~anchor
        buffer = top_k_mask(middle.masked_fill(~near, -torch.inf), round(self.buffer_fraction * keep)) & near
        chosen = anchor | buffer
        left = keep - chosen.sum(1, keepdim=True)  # [B, 1] registers
        rank = deep.masked_fill(chosen, -torch.inf).argsort(dim=1, descending=True, stable=True).argsort(dim=1)
        return plan_from_assignment(chosen | ((rank < left) & ~chosen))

    def __repr__(self) -> str:
        return f"HiPruneVisual(anchor_fraction={self.anchor_fraction}, buffer_fraction={self.buffer_fraction})"


VISUAL_METHODS: dict[str, type[VisualMethod]] = {
    cls.name: cls for cls in (ToMeVisual, DToMeVisual, RandomVisual, Downsample, FastV, VisionZip, HiPruneVisual)
}


def get_visual_method(name: str | VisualMethod, **options) -> VisualMethod:
    if isinstance(name, VisualMethod):
        return name
    if name not in VISUAL_METHODS:
        raise ValueError(f"unknown method {name!r} for the visual tokens: choose one of {', '.join(sorted(VISUAL_METHODS))}")
    return VISUAL_METHODS[name](**options)
