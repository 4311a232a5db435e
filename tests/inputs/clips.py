"""Synthetic clips as pixels: a textured static background with a moving bright square, and a hard cut."""
from __future__ import annotations

import numpy as np


def square_clip(frames: int = 8, side: int = 32, square: int = 8, step: int = 4, cut_at: int | None = None,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(frames [T, side, side, 3] uint8, moving [T, side, side] bool)``: a fixed random texture (a second one
    from frame ``cut_at`` on); a white ``square`` x ``square`` block moves ``step`` pixels right per frame."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 120, size=(side, side, 3), dtype=np.uint8)
    other = rng.integers(0, 120, size=(side, side, 3), dtype=np.uint8)
    clip = np.empty((frames, side, side, 3), dtype=np.uint8)
    moving = np.zeros((frames, side, side), dtype=bool)
    for t in range(frames):
        clip[t] = other if cut_at is not None and t >= cut_at else texture
        left = (t * step) % (side - square)
        clip[t, 12 : 12 + square, left : left + square] = 255
        moving[t, 12 : 12 + square, left : left + square] = True
    return clip, moving


def patch_mask(pixels: np.ndarray, patch: int) -> np.ndarray:
    """``[T, side, side]`` bool → ``[T * rows * cols]`` frame-major: patches any pixel of which is set."""
    frames, height, width = pixels.shape
    blocks = pixels.reshape(frames, height // patch, patch, width // patch, patch)
    return blocks.any(axis=(2, 4)).reshape(-1)
