"""TempMe: token merging inside a per-frame image encoder that joins the frames into clips as it goes.

Written from the merging of LunarShen/TempMe @e624930 (Shen et al., "TempMe: Video Temporal Token
Merging for Efficient Text-Video Retrieval", ICLR 2025): ``tvr/models/modeling.py``
(``get_video_feat`` and the per-layer counts in ``__init__``), ``tvr/models/module_tome_patch.py``
(``ToMeBlock.forward``) and ``tvr/models/module_tome_merge.py`` (``bipartite_soft_matching``,
``merge_wavg``). The frames of a clip are the batch of a CLIP ViT-B/32 (12 frames × 50 tokens = 600):

* layers 0–7: ToMe inside each frame, ``r = 2`` per layer, after the attention residual, the attention
  keys (mean over heads) as the metric;
* layers 8, 9, 10: before attention, groups of 2, 2, 3 consecutive sequences are concatenated into one
  (clips of 2, 4, 12 frames: 12 → 6 → 3 → 1 sequences; every member's CLS first, then every member's
  other tokens, member after member) and ``int(0.3 · tokens)`` merge across the clip, the hidden states
  entering the block as the metric; after the attention residual ``int(0.1 · tokens)`` merge (keys);
* layer 11 (any layer after the first clip layer that concatenates nothing): ``int(0.1 · tokens)`` (keys);
* each count is capped at half the unprotected tokens; ``tokens`` counts the CLS tokens too, as the
  original does. A clip layer that joins one sequence (a group of 1, never in the authors' runs) merges only
  after attention, ``int(0.1 · tokens)``; the original then skips the cross merge but still subtracts
  its count before taking the 10 %. 600 → 12 × 34 after layer 7 → 6 × 44 → 3 × 56 → 107 → 97.

Each merge is ToMe's bipartite soft matching with every CLS protected (this project's one ToMe rule,
:func:`tomviz.merge.tome.bipartite_plan`: A = even positions, B = odd, protected tokens first, then kept
A ascending, then B; the original's split and output order are the same), size-weighted means and
proportional attention (``log size`` on every logit; the original's ``prop_attn`` defaults to True).
The original's trained parts start at zero and are left out: its LoRA on the attention (``TVPt_LoRA_b``
is zero-initialised) and the video position embedding added at each clip layer (zeros).

Checked beside the original code (run outside this repository: its ``ResidualAttentionBlock`` s patched by its
``apply_patch`` and driven by its ``get_video_feat`` loop, the same random weights through this project's
engine and :func:`tomviz.models.blocks.prenorm_block`, float32). ViT-B/32's shape (12 × 50 tokens, width 768),
50 seeded inputs, half of them with frames that repeat most tokens exactly: the same token of every input at
every layer on 49, final tokens within 1.2e-4; on the other, one layer differs by a tie between identical
tokens of two frames (the same groups again a layer later). DINOv2-S's shape (16 × 257 tokens, width 384,
``r_early=10``, groups 2, 2, 4, ``odd_join=False``), 10 seeded inputs: the same at every layer, within 3e-6.

**Scaled to other encoders.** The embedded DINOv2-S/14 has 12 layers like ViT-B/32 but 256 patches a frame
(ViT-B/32: 49). The schedule follows the number of frames, tokens and layers:

* ``r_early`` (default): ``round(2 · patches / 49)`` per frame per layer, the authors' share of a frame
  (10 for DINOv2's 256 patches, 2 for ViT-B/32); the last layer before the first join removes one more when
  the frames would otherwise enter it with an even number of patches. The authors' frames enter it with
  49 − 16 = 33: joined as [CLS, CLS, frame 0, frame 1], the same place in two frames then sits at positions
  of opposite parity, on opposite sides of the bipartite split, so a static background can merge across the
  two frames; with an even count (DINOv2's 256 − 8r always is) it never could. ViT-B/32's schedule is unchanged
  (``odd_join=False``: the authors' constant ``r`` whatever the count);
* the clip layers (default): the three layers before the last (8, 9, 10 of 12);
* the clip groups (default): 2 while more than two sequences are left and their count is even, then the
  last clip layer joins all that are left, so the clip is one sequence after it, as 12 → 6 → 3 → 1 (16 frames: 2, 2, 4);
* ``cross`` = 0.3 and ``within`` = 0.1 are shares, kept as they are.

**Ratio.** TempMe has no single amount: ``scale`` multiplies ``r_early``, ``cross`` and ``within`` (each
share capped at 0.5); ``scale = 1`` is the authors' schedule. Given a ``ratio`` (the fraction of the clip's
patch tokens removed, as for every temporal method) and no ``scale``, the scale whose schedule removes the
nearest fraction is taken (:func:`settings_for_ratio`, a scan of the counts: no forward pass). ``ratio = 0``
is the identity: nothing merges and no frames are joined (the original joins clips even when nothing
merges, which lets their tokens attend to each other).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch

from tomviz.merge.base import LayerStep, MergeInputs, MergeMethod, max_removable
from tomviz.merge.plan import MergePlan
from tomviz.merge.tome import bipartite_plan

AUTHORS_PATCHES = 49  # CLIP ViT-B/32 at 224 px: 7 × 7 patches a frame
AUTHORS_R = 2  # --tome_r
AUTHORS_CROSS, AUTHORS_WITHIN = 0.3, 0.1  # --merge_token_proportion 30-10
AUTHORS_GROUPS = (2, 2, 3)  # --merge_frame_num for --max_frames 12
AUTHORS_MERGE_LAYERS = (8, 9, 10)  # --merge_layer, of 12
MAX_SHARE = 0.5  # bipartite matching removes at most half the tokens
SCALE_GRID = 600  # scales scanned in [0, MAX_SCALE] to meet a ratio
MAX_SCALE = 3.0


@dataclass(frozen=True)
class TempMeSettings:
    """One schedule's knobs (the authors' values are those of ViT-B/32 with 12 frames)."""

    r_early: int  # tokens each frame loses per layer before the first clip layer
    cross: float  # share merged across the joined clip, before attention
    within: float  # share merged after attention, at and after the first clip layer
    merge_layers: tuple[int, ...]  # layers that join sequences (0-based)
    groups: tuple[int, ...]  # sequences joined at each of those layers
    odd_join: bool = True  # one more token off before the first join if that makes a frame's patch count odd


def default_groups(num_frames: int, count: int = 3) -> tuple[int, ...]:
    """``count`` group sizes whose product is ``num_frames``: 2 while more than two sequences are left and their
    count is even, else 1; the last joins all that are left (12 → (2, 2, 3), 16 → (2, 2, 4), 6 → (2, 1, 3),
    4 → (2, 1, 2), 1 → (1, 1, 1))."""
    groups, left = [], int(num_frames)
    for _ in range(count - 1):
        joined = 2 if left % 2 == 0 and left > 2 else 1
        groups.append(joined)
        left //= joined
    return (*groups, left)


def default_merge_layers(num_layers: int, count: int = 3) -> tuple[int, ...]:
    """The ``count`` layers before the last: (8, 9, 10) of 12 (fewer in a shorter encoder; (0,) with one layer)."""
    return tuple(range(max(0, num_layers - 1 - count), max(1, num_layers - 1)))


def default_settings(num_frames: int, num_tokens: int, num_protected: int, num_layers: int) -> TempMeSettings:
    """The authors' schedule scaled to the encoder (module docstring)."""
    patches = num_tokens - num_protected
    layers = default_merge_layers(num_layers)
    return TempMeSettings(round(AUTHORS_R * patches / AUTHORS_PATCHES), AUTHORS_CROSS, AUTHORS_WITHIN, layers,
                          default_groups(num_frames, len(layers)))


def scaled(settings: TempMeSettings, scale: float) -> TempMeSettings:
    """``r_early``, ``cross`` and ``within`` times ``scale`` (the shares capped at :data:`MAX_SHARE`)."""
    return replace(settings, r_early=round(settings.r_early * scale), cross=min(MAX_SHARE, settings.cross * scale),
                   within=min(MAX_SHARE, settings.within * scale))


def tempme_steps(settings: TempMeSettings, num_frames: int, num_tokens: int, num_protected: int,
                 num_layers: int) -> list[LayerStep]:
    """Per layer: sequences joined, tokens removed before and after attention, per sequence, as
    ``get_video_feat`` counts them (``tokens`` includes the protected ones). num_tokens: a frame's tokens."""
    _check_settings(settings, num_frames, num_layers)
    joins = dict(zip(settings.merge_layers, settings.groups))
    tokens, protected, steps = num_tokens, num_protected, []
    for layer in range(num_layers):
        group = joins.get(layer, 1)
        before = 0
        if group > 1:  # a clip layer that joins nothing merges only after attention, like layer 11
            tokens, protected = tokens * group, protected * group
            before = min(max_removable(tokens, protected), int(tokens * settings.cross))
            tokens -= before
        if layer < settings.merge_layers[0]:
            after = min(max_removable(tokens, protected), settings.r_early)
            last_early = layer == settings.merge_layers[0] - 1
            if settings.odd_join and last_early and after and (tokens - after - protected) % 2 == 0:
                after = min(max_removable(tokens, protected), after + 1)  # an odd count at the first join
        else:
            after = min(max_removable(tokens, protected), int(tokens * settings.within))
        tokens -= after
        steps.append(LayerStep(group=group, before=before, after=after))
    return steps


def _check_settings(settings: TempMeSettings, num_frames: int, num_layers: int) -> None:
    layers, groups = settings.merge_layers, settings.groups
    if not layers or len(layers) != len(groups) or list(layers) != sorted(set(layers)):
        raise ValueError(f"tempme: merge_layers {layers} must be increasing, one per group in {groups}")
    if layers[0] < 0 or layers[-1] >= num_layers:
        raise ValueError(f"tempme: merge_layers {layers} must lie in 0..{num_layers - 1}")
    product = 1
    for group in groups:
        product *= int(group)
    if min(groups) < 1 or product != num_frames:
        raise ValueError(f"tempme: the groups {groups} must multiply to the {num_frames} frames")
    if settings.r_early < 0 or not (0 <= settings.cross <= MAX_SHARE and 0 <= settings.within <= MAX_SHARE):
        raise ValueError(f"tempme: r_early >= 0 and shares in [0, {MAX_SHARE}], got {settings}")


def tokens_out(steps: list[LayerStep], num_frames: int, num_tokens: int) -> int:
    """Tokens of the whole clip after the last layer (protected included)."""
    sequences, tokens = num_frames, num_tokens
    for step in steps:
        sequences //= step.group
        tokens = tokens * step.group - step.before - step.after
    return sequences * tokens


@functools.lru_cache(maxsize=256)
def settings_for_ratio(ratio: float, base: TempMeSettings, num_frames: int, num_tokens: int, num_protected: int,
                       num_layers: int) -> TempMeSettings:
    """``base`` scaled so that the clip loses the fraction of its patch tokens nearest ``ratio`` (the smallest
    such scale). Cached: a pure function of its arguments (~10 ms of counting)."""
    patches = num_frames * (num_tokens - num_protected)
    best, best_gap = scaled(base, 0.0), float("inf")
    for index in range(SCALE_GRID + 1):
        settings = scaled(base, MAX_SCALE * index / SCALE_GRID)
        steps = tempme_steps(settings, num_frames, num_tokens, num_protected, num_layers)
        removed = num_frames * num_tokens - tokens_out(steps, num_frames, num_tokens)
        gap = abs(removed / patches - ratio)
        if gap < best_gap - 1e-12:
            best, best_gap = settings, gap
    return best


def clip_order(group: int, num_tokens: int, num_protected: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[group * N]``: for each slot of the joined sequence, its index in the ``[group, N]`` members flattened
    member-major: every member's ``num_protected`` leading tokens first, then every member's other tokens."""
    index = torch.arange(group * num_tokens, device=device).view(group, num_tokens)
    return torch.cat([index[:, :num_protected].reshape(-1), index[:, num_protected:].reshape(-1)])


def join_clips(x: torch.Tensor, group: int, num_protected: int) -> torch.Tensor:
    """``[B, N, ...]`` → ``[B / group, group * N, ...]``: ``group`` consecutive sequences joined as
    :func:`clip_order` says (``x`` may be hidden states ``[B, N, C]``, sizes ``[B, N, 1]``)."""
    batch, num_tokens = x.shape[:2]
    if batch % group:
        raise ValueError(f"tempme: {batch} sequences cannot be joined in groups of {group}")
    joined = x.reshape(batch // group, group * num_tokens, *x.shape[2:])
    return joined[:, clip_order(group, num_tokens, num_protected, x.device)]


def join_source(source: torch.Tensor, group: int, num_tokens: int, num_protected: int) -> torch.Tensor:
    """A source map through :func:`join_clips`: ``[B, N0]`` (each input token's index in its sequence of
    ``num_tokens``, -1 = pruned) → ``[B / group, group * N0]``, the members' input tokens one after the other."""
    batch, inputs = source.shape
    order = clip_order(group, num_tokens, num_protected, source.device)
    slot = torch.empty_like(order)
    slot[order] = torch.arange(order.numel(), device=source.device)  # flattened member index → joined slot
    member = torch.arange(batch, device=source.device).remainder(group).unsqueeze(1)  # [B, 1]
    joined = slot[(member * num_tokens + source).clamp(min=0)]
    joined = torch.where(source < 0, source, joined)
    return joined.reshape(batch // group, group * inputs)


class TempMeMerge(MergeMethod):
    """TempMe's merging for the engine: the batch is a clip's frames in order (module docstring)."""

    name = "tempme"
    label = "TempMe (clip merging in the encoder)"
    modalities = ("video",)

    def __init__(self, ratio: float | None = None, scale: float | None = None, **overrides: object):
        if ratio is None and scale is None:
            scale = 1.0
        self.ratio, self.scale, self.overrides = ratio, scale, dict(overrides)

    def settings(self, num_frames: int, num_tokens: int, num_protected: int, num_layers: int) -> TempMeSettings:
        """The knobs for this clip: the defaults (or the overrides), then ``scale`` or the ``ratio``'s scale."""
        base = replace(default_settings(num_frames, num_tokens, num_protected, num_layers), **self.overrides)
        base = replace(base, merge_layers=tuple(base.merge_layers), groups=tuple(base.groups))
        if self.scale is not None:
            return scaled(base, float(self.scale))
        return settings_for_ratio(float(self.ratio), base, num_frames, num_tokens, num_protected, num_layers)

    def layer_steps(self, batch: int, num_tokens: int, num_protected: int, num_layers: int) -> list[LayerStep]:
        if self.scale is None and not self.ratio:
            return [LayerStep()] * num_layers  # ratio 0: the identity, no clips joined
        settings = self.settings(batch, num_tokens, num_protected, num_layers)
        return tempme_steps(settings, batch, num_tokens, num_protected, num_layers)

    def join(self, x: torch.Tensor, group: int, num_protected: int) -> torch.Tensor:
        return join_clips(x, group, num_protected)

    def join_source(self, source: torch.Tensor, group: int, num_tokens: int, num_protected: int) -> torch.Tensor:
        return join_source(source, group, num_tokens, num_protected)

    def plan_before_attention(self, inputs: MergeInputs, r: int) -> MergePlan:
        """The cross-clip merge: the hidden states entering the block as the metric."""
        return bipartite_plan(inputs.hidden, r, inputs.num_protected, inputs.valid)

    def plan_removal(self, inputs: MergeInputs, r: int) -> MergePlan:
        """The merge after attention: the keys as the metric (ToMe)."""
        return bipartite_plan(inputs.metric, r, inputs.num_protected, inputs.valid)

    def __repr__(self) -> str:
        return f"TempMeMerge(ratio={self.ratio!r}, scale={self.scale!r}, {self.overrides!r})"
