"""The interface every merge method implements.

A method sees one layer's tokens (:class:`MergeInputs`) and the number of
tokens the schedule asks it to remove (``r``), and returns a
:class:`~tomviz.merge.plan.MergePlan`. Methods are pure tensor math: they know
nothing about models. Protected tokens (CLS, distillation, registers) are
always the first ``num_protected`` tokens; a plan keeps them, alone, at the
same output positions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from tomviz.merge.plan import MergePlan


@dataclass
class MergeInputs:
    """What a method may read at one layer (batch B, tokens N, channels C)."""

    metric: torch.Tensor  # [B, N, C_k] keys summed over heads (ToMe's metric up to scale: compare by cosine)
    num_protected: int = 1  # the first tokens never merge and are never merged into
    hidden: torch.Tensor | None = None  # [B, N, C] hidden states after the attention residual
    cls_attention: torch.Tensor | None = None  # [B, N] CLS→token attention, mean over heads
    sizes: torch.Tensor | None = None  # [B, N, 1] tokens represented by each token (None = ones)
    valid: torch.Tensor | None = None  # [B, N] bool, False for padding (text); None = all valid
    positions: torch.Tensor | None = None  # [B, N] long, smallest input position in each token (if needs_positions)
    attention: torch.Tensor | None = None  # [B, N, N] (query, key) attention probabilities, mean over heads (if needs_attention)
    history: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, N_l, N_l] ``attention`` of the observed layers run so far
    layer: int = 0  # 0-based layer index
    num_layers: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # per-input side information (e.g. word ids, patch grid)


@dataclass(frozen=True)
class LayerStep:
    """What one layer does when the batch is a clip's frames in order (:meth:`MergeMethod.layer_steps`)."""

    group: int = 1  # consecutive sequences joined into one before attention (1: none)
    before: int = 0  # tokens removed from each joined sequence before attention
    after: int = 0  # tokens removed from each sequence after the attention residual


class MergeMethod:
    """Base class: subclasses set ``name``/``label`` and implement :meth:`plan_removal` (the real case:
    0 < r <= :meth:`removable`); :meth:`plan` clips ``r`` and returns the identity when nothing is removed.
    A method whose own rule decides when nothing is removed (DToMe, DiffRate, subword) overrides :meth:`plan`."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # shown in the UI
    needs_cls_attention: ClassVar[bool] = False  # the engine computes CLS attention before planning
    needs_hidden: ClassVar[bool] = False
    needs_positions: ClassVar[bool] = False  # the engine tracks MergeInputs.positions through the merges
    needs_attention: ClassVar[bool] = False  # the engine computes MergeInputs.attention (the full attention map)
    plans_every_layer: ClassVar[bool] = False  # plan is called at every layer, also with r=0 (e.g. to reorder)
    modalities: ClassVar[tuple[str, ...]] = ("image", "text")  # the inputs the method applies to

    def plan(self, inputs: MergeInputs, r: int) -> MergePlan:
        """The plan removing ``r`` tokens at this layer: ``r`` clipped to :meth:`removable`; the identity
        plan when that leaves nothing to remove, else :meth:`plan_removal`."""
        batch, num_tokens = inputs.metric.shape[:2]
        r = min(r, self.removable(inputs))
        if r <= 0:
            return MergePlan.identity(batch, num_tokens, inputs.metric.device)
        return self.plan_removal(inputs, r)

    def plan_at_most(self, inputs: MergeInputs, r: int) -> MergePlan:
        """A step that removes at most ``r`` tokens (a VLM's boundary repeats steps until a token count is
        reached). Default: :meth:`plan`; a method whose rule may remove more than asked (DToMe) caps it."""
        return self.plan(inputs, r)

    def removable(self, inputs: MergeInputs) -> int:
        """The most tokens one step removes (default: bipartite matching's limit, half the unprotected tokens)."""
        return max_removable(inputs.metric.shape[1], inputs.num_protected)

    def plan_removal(self, inputs: MergeInputs, r: int) -> MergePlan:  # pragma: no cover - interface
        """The plan removing ``r`` tokens, ``0 < r <= removable(inputs)``."""
        raise NotImplementedError

    def schedule_for(self, requested: list[int], num_tokens: int, num_protected: int, num_layers: int) -> list[int]:
        """Tokens to remove per layer, given the checked schedule the caller asked for.

        The default runs the request. A method with its own schedule (a published one, or a
        single-shot selection) returns another list of ``num_layers`` counts; it may remove more
        than half the tokens in a layer. ``num_tokens`` counts the input tokens.
        """
        return requested

    def layer_steps(self, batch: int, num_tokens: int, num_protected: int, num_layers: int) -> list[LayerStep] | None:
        """For a method that reads the batch as a clip's frames (TempMe) and joins them into longer
        sequences as the layers go: one :class:`LayerStep` per layer, which replaces the schedule. None
        (the default): the batch holds independent inputs and the schedule says what each layer removes."""
        return None

    def join(self, x: torch.Tensor, group: int, num_protected: int) -> torch.Tensor:  # pragma: no cover - interface
        """With :meth:`layer_steps`: ``[B, N, ...]`` → ``[B / group, group * N, ...]``, protected tokens first."""
        raise NotImplementedError

    def join_source(self, source: torch.Tensor, group: int, num_tokens: int, num_protected: int) -> torch.Tensor:  # pragma: no cover - interface
        """With :meth:`layer_steps`: a source map ``[B, N0]`` through :meth:`join` → ``[B / group, group * N0]``."""
        raise NotImplementedError

    def plan_before_attention(self, inputs: MergeInputs, r: int) -> MergePlan:  # pragma: no cover - interface
        """With :meth:`layer_steps`: the plan removing ``r`` tokens before attention (``inputs.hidden``: the
        tokens entering the block; ``inputs.metric`` is the same tensor)."""
        raise NotImplementedError

    def observed_layers(self, num_layers: int) -> tuple[int, ...]:
        """Layers (0-based) whose ``attention`` the engine keeps in ``MergeInputs.history`` for
        later layers, running them even where nothing merges (needs ``needs_attention``)."""
        return ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def max_removable(num_tokens: int, num_protected: int) -> int:
    """The most tokens one bipartite step can remove: half the unprotected tokens."""
    return max(0, (num_tokens - num_protected) // 2)
