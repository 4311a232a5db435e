"""Reducing the visual tokens a language model receives: pure tensor math, no model knowledge.

A vision-language model hands its LLM ``V`` visual tokens (``T`` tiles of a
``rows x cols`` grid each, tile-major, row-major inside a tile). A
:class:`VisualMethod` decides, once, which of them the LLM gets: it returns a
:class:`~tomviz.merge.plan.MergePlan` over the ``V`` tokens (merged groups are
size-weighted means, -1 = pruned), the same type every encoder method returns.

The methods come from one registry (:mod:`tomviz.merge.registry`): a name means one algorithm
wherever it runs. An encoder method registered for the boundary runs its own rule here
(:class:`AtBoundary`), with the registry's defaults for this place (FastV: Chen et al., ECCV 2024;
VisionZip: Yang et al., CVPR 2025):

* ``tome``: ToMe's bipartite matching on the tokens' features, repeated until the
  target count is reached (one step removes at most half);
* ``dtome``: DToMe's threshold merging, repeated; the count adapts to the image (``keep`` is a floor);
* ``hiprune``: HiPrune's anchors, 4-neighbour buffers and registers, from the attention each token
  received in two encoder layers (the encoder method's rule and defaults, ``alpha=0.1``);
* ``random_prune``: keep a seeded random subset (the baseline that benchmarks find strong);
  ``random`` is its old name here, deprecated: ``random`` is random *merging* in an encoder.

Methods of this place only:

* ``downsample``: average-pool each tile's grid to a smaller grid (plain downsampling);
* ``fastv``: keep the tokens most attended by the last prompt token (FastV; applied
  inside the LLM at layer K by the LLM adapter, which supplies the attention);
* ``visionzip``: the authors' rule (:mod:`tomviz.merge.visionzip`), per crop before the projector: CLS and
  the "dominant" patches of layer -2's CLS attention, the rest merged into "contextual" tokens by key
  similarity; the model hands over the encoder's tensors (``before_projector``);
* ``visionzip_paper``: the paper's description on the LLM's tokens, for families without a CLS token;
* ``aim``: AIM's plain-mean bipartite merging per tile (inside the LLM: its PageRank pruning).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from tomviz.merge import registry
from tomviz.merge.aim import aim_merge, merge_steps
from tomviz.merge.base import MergeInputs, MergeMethod
from tomviz.merge.checks import deprecated
from tomviz.merge.fastv import fastv_top
from tomviz.merge.plan import PRUNED, MergePlan
from tomviz.merge.selection import plan_from_assignment, top_k_mask
from tomviz.merge.tome import ToMe
from tomviz.merge.visionzip import CONTEXTUAL, DOMINANT, VisionZipResult, visionzip


@dataclass
class VisualTokens:
    """What a visual method may read (batch B, V visual tokens)."""

    features: torch.Tensor  # [B, V, D] the tokens as the LLM would receive them
    tile_grid: tuple[int, int]  # (rows, cols) of one tile's token grid; V = num_tiles * rows * cols
    num_tiles: int = 1
    attention: torch.Tensor | None = None  # [B, V] attention each token received (encoder's deep layer, or the LLM's last token)
    attention_middle: torch.Tensor | None = None  # [B, V] the same in a middle encoder layer (HiPrune's anchors)
    seed: int = 0  # random methods: the seed of the call (a VLM request's ``seed``)


class VisualMethod:
    """Base class: ``plan(tokens, keep)`` → a plan with (about) ``keep`` outputs; subclasses
    implement ``_plan`` (the checks are made here once)."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    needs_attention: ClassVar[bool] = False  # VisualTokens.attention must be given
    needs_grid: ClassVar[bool] = False  # reads the tile grid (or attention pooled onto it): equal tiles only
    before_projector: ClassVar[bool] = False  # selects on the vision encoder's tensors before the projector (``select``)
    own_values: ClassVar[bool] = False  # ``reduce`` gives the LLM's tokens in the method's order (not group means)

    def plan(self, tokens: VisualTokens, keep: int) -> MergePlan:
        num_tokens = tokens.features.shape[1]
        if not 1 <= keep <= num_tokens:
            raise ValueError(f"{self.name}: cannot keep {keep} of {num_tokens} visual tokens")
        if self.needs_attention and tokens.attention is None:
            raise ValueError(f"{self.name} needs the attention each visual token received")
        return self._plan(tokens, keep)

    def _plan(self, tokens: VisualTokens, keep: int) -> MergePlan:  # pragma: no cover - interface
        raise NotImplementedError

    def attention_layers(self, num_layers: int) -> dict[str, int]:
        """The encoder layers (0-based, of ``num_layers``) whose received attention a method with
        ``needs_attention`` reads: ``{"deep": L-2, "middle": L//2}`` (``VisualTokens.attention`` / ``attention_middle``)."""
        return {"deep": max(0, num_layers - 2), "middle": num_layers // 2}

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


def steps_to(method: MergeMethod, features: torch.Tensor, keep: int, seed: int = 0) -> tuple[MergePlan, int]:
    """``method``'s rule, step after step, on ``[B, V, D]`` tokens with nothing protected, until ``keep``
    tokens remain or a step removes nothing (a threshold method). Returns (the composed plan, the steps)."""
    batch, num_tokens, _ = features.shape
    plan = MergePlan.identity(batch, num_tokens, features.device)
    current, sizes, steps = features, None, 0
    while current.shape[1] > keep:
        inputs = MergeInputs(metric=current, num_protected=0, hidden=current, sizes=sizes, extra={"seed": seed})
        r = min(current.shape[1] - keep, method.removable(inputs))
        step = method.plan_at_most(inputs, r) if r > 0 else None
        if step is None or step.num_out == current.shape[1]:
            break
        current, sizes = step.merge(current, sizes)
        plan = compose(plan, step)
        steps += 1
    return plan, steps


def bipartite_to(metric: torch.Tensor, keep: int) -> tuple[MergePlan, int]:
    """Repeated ToMe steps until ``keep`` tokens remain. metric: ``[B, V, D]``. Returns (the composed plan, the steps)."""
    return steps_to(ToMe(), metric, keep)


class AtBoundary(VisualMethod):
    """An encoder method's own rule on the visual tokens (the boundary entry of the same registry name).

    A method that reads the encoder's attention (HiPrune) selects once from the attention each visual token
    received (``plan_received``); any other runs step after step on the features (:func:`steps_to`)."""

    def __init__(self, method: MergeMethod):
        self.method = method
        self.name, self.label = method.name, method.label
        self.needs_attention = self.needs_grid = hasattr(method, "plan_received")

    def _plan(self, tokens: VisualTokens, keep: int) -> MergePlan:
        if self.needs_attention:
            middle = tokens.attention if tokens.attention_middle is None else tokens.attention_middle
            return self.method.plan_received(middle.float(), tokens.attention.float(), keep, tokens.tile_grid,
                                             tokens.num_tiles)
        return steps_to(self.method, tokens.features.float(), keep, tokens.seed)[0]

    def attention_layers(self, num_layers: int) -> dict[str, int]:
        """HiPrune's own layers: its anchor layer (``"middle"``) and its register layer (``"deep"``)."""
        anchor, register = self.method.selection_layers(num_layers)
        return {"deep": register, "middle": anchor}

    def __repr__(self) -> str:
        return f"AtBoundary({self.method!r})"


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
    """Keep the ``keep`` tokens the last prompt token attends to most (FastV, Chen et al. 2024), chosen by
    :func:`tomviz.merge.fastv.fastv_top` (``torch.topk``, as pkunlp-icler/FastV @d165972 ``fastv_forward``)."""

    name = "fastv"
    label = "FastV (drop the least attended, inside the LLM at layer K)"
    needs_attention = True

    def _plan(self, tokens: VisualTokens, keep: int) -> MergePlan:
        scores = tokens.attention.float()  # [B, V]
        kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, fastv_top(scores, keep), True)
        return plan_from_assignment(kept)


class VisionZip(VisualMethod):
    """VisionZip as its authors' code does it (:func:`tomviz.merge.visionzip.visionzip`): per crop, on the
    vision encoder's layer -2 (hidden states with CLS, the CLS row of its attention, its keys), before the
    projector; every crop gets the same budget. The model side hands those tensors to :meth:`select`
    (``before_projector``); :meth:`plan` on the LLM's tokens is refused.

    Counts per crop: ``dominant`` (CLS counted) and ``contextual`` when given, else ``keep`` tokens (from the
    ratio) split as the README's 54 + 10 of 64 (:func:`visionzip_counts`).

    As dvlab-research/VisionZip @3151f6d ``visionzip/clip_encoder.py`` ``CLIPVisionTower_VisionZip.forward``
    feeds LLaVA: per crop, ``[CLS, dominant patches (input order), contextual tokens]`` go through the
    projector and take the image token's place, positions contiguous, no size bias in the LLM. Deliberate
    differences: the ratio sets the count when ``dominant``/``contextual`` are not given (the original takes the
    two counts only); the CLS row and keys are recomputed in float32 from the layer's queries and keys (the
    original reads CLIP's eager attention weights; SDPA stays the kernel here); the trace's partition is over
    the patches, so each crop's CLS, which stands for no patch, is counted apart (``carried_tokens``)."""

    name = "visionzip"
    label = "VisionZip (authors' rule: CLS + dominant + contextual tokens per crop, before the projector)"
    before_projector = True

    def __init__(self, dominant: int | None = None, contextual: int | None = None):
        if (dominant is None) != (contextual is None):
            raise ValueError("visionzip: give both dominant and contextual (per crop), or neither (the ratio decides)")
        self.dominant, self.contextual = dominant, contextual

    def counts(self, keep: int) -> tuple[int, int]:
        """(dominant with CLS, contextual) per crop for ``keep`` tokens per crop."""
        if self.dominant is not None:
            return int(self.dominant), int(self.contextual)
        return visionzip_counts(keep)

    def select(self, hidden: torch.Tensor, cls_attention: torch.Tensor, keys: torch.Tensor, keep: int) -> VisionZipResult:
        """hidden ``[T, N, Dv]`` (CLS first), cls_attention ``[T, H, N]``, keys ``[T, H, N, d]`` → the rule's result
        (``hidden [T, d + c, Dv]``)."""
        dominant, contextual = self.counts(keep)
        return visionzip(hidden, cls_attention, keys, dominant=dominant, contextual=contextual)

    def _plan(self, tokens: VisualTokens, keep: int) -> MergePlan:
        raise ValueError("visionzip runs before the projector, on the vision encoder's CLS attention and keys: the "
                         "model must hand them over (a LLaVA with a CLIP tower); visionzip_paper works on any tokens")

    def __repr__(self) -> str:
        return f"VisionZip(dominant={self.dominant}, contextual={self.contextual})"


def visionzip_counts(keep: int) -> tuple[int, int]:
    """(dominant with CLS, contextual) for ``keep >= 2`` tokens per crop, in the README's share (54 + 10 of 64)."""
    if keep < 2:
        raise ValueError(f"visionzip keeps the CLS token and at least one patch per crop, not {keep} tokens: lower the ratio")
    contextual = round(keep * CONTEXTUAL / (DOMINANT + CONTEXTUAL))
    return keep - contextual, contextual


class AIM(VisualMethod):
    """AIM (Zhong et al., arXiv 2412.03248) at the boundary: its merging before the LLM
    (:func:`tomviz.merge.aim.aim_merge`), per tile or frame with the same budget: ToMe's bipartite matching on
    the features, each destination the **plain mean** (no sizes, no proportional attention), the output in
    the original's order (unmerged A by best match, then B), steps of at most half
    (:func:`tomviz.merge.aim.merge_steps`: ratio 0.75 on 196 tokens is the authors' OneVision 196 → 98 → 49,
    0.5625 on 576 their LLaVA-1.5 576 → 288 → 252). Inside the LLM the same name is its PageRank pruning,
    run by the LLM adapter (``tomviz.models.llm.AIMRequest``)."""

    needs_grid = True
    own_values = True
    name = "aim"
    label = "AIM (plain-mean bipartite merging per tile; inside the LLM: PageRank pruning)"

    def reduce(self, tokens: VisualTokens, keep: int) -> tuple[torch.Tensor, MergePlan]:
        """``([B, keep', D]`` the merged tokens in AIM's order, the plan ``[B, V]`` onto them): ``keep'`` is
        ``round(keep / T)`` per tile."""
        batch, num_tokens, width = tokens.features.shape
        tiles = tokens.num_tiles
        per_tile = round(keep / tiles)
        if num_tokens % tiles or per_tile < 1:
            raise ValueError(f"aim merges per tile: {num_tokens} tokens in {tiles} tiles cannot keep {keep}")
        x = tokens.features.reshape(batch * tiles, num_tokens // tiles, width)  # [B*T, n, D]
        merged, source = aim_merge(x, merge_steps(x.shape[1], per_tile))  # [B*T, k, D], [B*T, n]
        kept = merged.shape[1]
        offset = torch.arange(tiles, device=source.device).repeat(batch)[:, None] * kept
        dst = (source + offset).reshape(batch, num_tokens)
        return merged.reshape(batch, tiles * kept, width), MergePlan(dst=dst, num_out=tiles * kept)

    def _plan(self, tokens: VisualTokens, keep: int) -> MergePlan:
        return self.reduce(tokens, keep)[1]


class VisionZipPaper(VisualMethod):
    """VisionZip's idea as the paper describes it, on the tokens the LLM receives (any family): dominant
    tokens (most attention received in the encoder) plus ``contextual`` tokens: the rest are split into
    ``contextual`` groups around evenly spaced centres, each token joining its most similar centre (cosine of
    the features). Not the authors' code (that is ``visionzip``): no CLS, the projector's outputs, group means."""

    needs_grid = True
    name = "visionzip_paper"
    label = "VisionZip, paper's description on the LLM's tokens (any model; not the authors' rule)"
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
        return f"VisionZipPaper(contextual_fraction={self.contextual_fraction})"


VISUAL_METHODS: dict[str, type] = registry.classes("boundary", "llm")  # name → class, of the boundary and the LLM
_OLD_CLASSES = {"ToMeVisual": "tome", "DToMeVisual": "dtome", "RandomVisual": "random_prune", "HiPruneVisual": "hiprune"}


def get_visual_method(name: str | VisualMethod, **options: Any) -> VisualMethod:
    """The method ``name`` for the visual tokens (at the boundary, or ``fastv`` inside the LLM): the registry's
    class with its defaults for that place, then ``options``; an encoder method's rule through :class:`AtBoundary`."""
    if isinstance(name, VisualMethod):
        return name
    known = registry.ENTRIES.get(name)
    place = "llm" if known is not None and known.places == ("llm",) else "boundary"
    entry = registry.entry(name, place)
    method = entry.load()(**{**entry.defaults.get(place, {}), **options})
    return AtBoundary(method) if isinstance(method, MergeMethod) else method


def __getattr__(name: str) -> Any:
    if name in _OLD_CLASSES:  # the boundary's own copies of encoder rules, now the encoder rules themselves
        deprecated(f"tomviz.merge.visual.{name}", f"get_visual_method({_OLD_CLASSES[name]!r})", stacklevel=2)
        return functools.partial(get_visual_method, _OLD_CLASSES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
