"""The one result type of every temporal method: which group each token of each frame joins.

Temporal methods read the tokens of a whole clip at once, ``[T, N, C]`` (T frames, N tokens per frame,
C channels), and return a :class:`TemporalReduction`: the kept tokens and, for every input token in
frame-major order (index ``t * N + n``), the kept token that represents it, or ``PRUNED`` (-1) when the
method drops it. The group of kept token ``m`` is ``{i : group[i] == m}``; it may span many frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tomviz.merge.plan import PRUNED


@dataclass(frozen=True)
class TemporalReduction:
    """Kept tokens of a clip and the partition of its input tokens."""

    tokens: torch.Tensor  # [M, C] kept tokens, in the order the method hands them on
    group: torch.Tensor  # [T*N] long: output index of every input token (frame-major), PRUNED = -1
    position: torch.Tensor  # [M] long: the input index (t*N + n) whose place each kept token takes
    num_frames: int  # T
    tokens_per_frame: int  # N
    segments: tuple[tuple[int, int], ...] = ()  # inclusive frame ranges, for methods that segment the clip

    @property
    def num_kept(self) -> int:
        return self.tokens.shape[0]

    def group_sizes(self) -> torch.Tensor:
        """``[M]`` input tokens in each group."""
        return torch.bincount(self.group[self.group >= 0], minlength=self.num_kept)

    def frames_spanned(self) -> torch.Tensor:
        """``[M]`` number of distinct frames each group has a member in."""
        kept = self.group >= 0
        frame = torch.arange(self.group.numel(), device=self.group.device) // self.tokens_per_frame
        pairs = torch.unique(torch.stack([self.group[kept], frame[kept]]), dim=1)  # [2, distinct (group, frame)]
        return torch.bincount(pairs[0], minlength=self.num_kept)

    def validate(self) -> None:
        """AssertionError unless: one entry per input token, indices in range, every kept token has a
        member, and each kept token's position is one of its own members."""
        total = self.num_frames * self.tokens_per_frame
        assert self.group.shape == (total,), f"group has shape {tuple(self.group.shape)}, expected ({total},)"
        assert self.position.shape == (self.num_kept,), "one position per kept token"
        assert int(self.group.min()) >= PRUNED and int(self.group.max()) < self.num_kept, "group index out of range"
        assert bool((self.group_sizes() > 0).all()), "a kept token has no member"
        assert bool((self.group[self.position] == torch.arange(self.num_kept, device=self.group.device)).all()), (
            "a kept token sits at the place of a token outside its group"
        )


def check_tokens(tokens: torch.Tensor) -> tuple[int, int, int]:
    """``(T, N, C)`` of a ``[T, N, C]`` tensor; ValueError otherwise."""
    if tokens.ndim != 3 or min(tokens.shape) == 0:
        raise ValueError(f"expected per-frame tokens [T, N, C], got shape {tuple(tokens.shape)}")
    return tuple(tokens.shape)  # type: ignore[return-value]


def check_ratio(name: str, value: float) -> float:
    """ValueError unless ``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


def mean_by_group(flat: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``[M, C]`` plain mean of the rows of ``flat`` ``[L, C]`` in each group (``group`` ``[L]``, -1 ignored)."""
    kept = group >= 0
    sums = torch.zeros(num_groups, flat.shape[1], dtype=flat.dtype, device=flat.device)
    sums.index_add_(0, group[kept], flat[kept])
    counts = torch.bincount(group[kept], minlength=num_groups).clamp(min=1).to(flat.dtype)
    return sums / counts[:, None]


def reduction_from_keep(tokens: torch.Tensor, keep: torch.Tensor) -> TemporalReduction:
    """Pruning only: ``keep`` ``[T*N]`` bool; kept tokens alone, in frame-major order, the rest PRUNED."""
    num_frames, per_frame, _ = check_tokens(tokens)
    flat = tokens.reshape(num_frames * per_frame, -1)
    position = keep.nonzero().flatten()
    group = torch.full((flat.shape[0],), PRUNED, dtype=torch.long, device=tokens.device)
    group[position] = torch.arange(position.numel(), device=tokens.device)
    return TemporalReduction(flat[position], group, position, num_frames, per_frame)
