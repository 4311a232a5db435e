"""Synthetic clips as per-frame tokens: a textured static background, a moving square, an optional hard cut."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tomviz.merge.temporal.base import TemporalReduction


@dataclass
class TokenClip:
    tokens: torch.Tensor  # [T, N, C]
    square: torch.Tensor  # [T, N] bool: the moving square's tokens
    attention: torch.Tensor  # [T, N] high on the square, low on the background
    frame_features: torch.Tensor  # [T, C] mean token of each frame (a stand-in for a CLS token)


def moving_square(frames: int = 8, side: int = 8, channels: int = 16, cut_at: int | None = None, seed: int = 0) -> TokenClip:
    """A ``side x side`` token grid; the background is a random vector per position (plus 2 % noise per frame);
    a 2x2 square of one distinct vector moves 2 columns per frame (no overlap between frames); from frame
    ``cut_at`` on, a new background orthogonal to the old one at every position (a hard cut)."""
    g = torch.Generator().manual_seed(seed)
    background = torch.randn(side * side, channels, generator=g)
    after_cut = torch.randn(side * side, channels, generator=g)
    after_cut -= (after_cut * background).sum(1, keepdim=True) / (background**2).sum(1, keepdim=True) * background  # orthogonal
    square_vector = 3 * torch.randn(channels, generator=g)
    tokens = torch.empty(frames, side * side, channels)
    square = torch.zeros(frames, side, side, dtype=torch.bool)
    for t in range(frames):
        scene = after_cut if cut_at is not None and t >= cut_at else background
        tokens[t] = scene + 0.02 * torch.randn(side * side, channels, generator=g)
        col = (2 * t) % (side - 1)
        square[t, 3:5, col : col + 2] = True
    square = square.flatten(1)
    tokens[square] = square_vector + 0.02 * torch.randn(int(square.sum()), channels, generator=g)
    attention = torch.where(square, 1.0, 0.01) + 0.001 * torch.rand(frames, side * side, generator=g)
    return TokenClip(tokens, square, attention, tokens.mean(dim=1))


def groups_of(reduction: TemporalReduction) -> list[set[int]]:
    """The groups as sets of frame-major input indices."""
    groups = [set() for _ in range(reduction.num_kept)]
    for index, slot in enumerate(reduction.group.tolist()):
        if slot >= 0:
            groups[slot].add(index)
    return groups


def frames_of(indices: set[int], per_frame: int) -> set[int]:
    return {i // per_frame for i in indices}
