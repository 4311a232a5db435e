"""Pictures of a VLM result: what reaches the language model, and where an answer token looked.

The visual tokens of a VLM are laid out per tile (``meta["token_grid"]``, ``meta["num_tiles"]``,
tile-major, or tiles of different grids in ``meta["tile_grids"]``: LLaVA-OneVision's base view and its
cropped anyres grid); a tile is drawn over the whole photo (SmolVLM's last tile is the global view of a
split image; OneVision's last is the anyres grid; an unsplit image has one tile). Never imports gradio.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from tomviz.render.overlay import group_overlay, heatmap_overlay
from tomviz.trace import Trace


def tile_slices(trace: Trace) -> list[tuple[slice, tuple[int, int]]]:
    """Each tile's visual tokens (a slice of the trace's input tokens) and its ``(rows, cols)`` grid."""
    grids = trace.meta.get("tile_grids") or [trace.meta["token_grid"]] * int(trace.meta["num_tiles"])
    out, start = [], 0
    for rows, cols in grids:
        out.append((slice(start, start + rows * cols), (int(rows), int(cols))))
        start += rows * cols
    return out


def _tile_slice(trace: Trace, tile: int) -> tuple[slice, tuple[int, int]]:
    slices = tile_slices(trace)
    return slices[tile % len(slices)]


def reaches_llm_overlay(image: Image.Image, boundary: Trace, tile: int = -1) -> Image.Image:
    """The groups of visual tokens the LLM receives (boundary stage) on one tile; pruned tokens dark."""
    part, grid = _tile_slice(boundary, tile)
    return group_overlay(image, boundary.groups(-1)[part], grid, 0)


def answer_attention_overlay(image: Image.Image, boundary: Trace, attention: np.ndarray, step: int,
                             layer: int | None = None, tile: int = -1) -> Image.Image:
    """Attention of answer step ``step`` to the visual tokens, spread onto one tile through the trace.

    attention: ``[layers, A, V']`` (``VLMResult.answer_attention``); ``layer=None`` averages the layers.
    """
    values = attention[:, step].mean(0) if layer is None else attention[layer, step]  # [V']
    spread = boundary.spread(values, -1)  # [V], nan where pruned
    part, grid = _tile_slice(boundary, tile)
    return heatmap_overlay(image, spread[part], grid)
