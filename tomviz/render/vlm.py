"""Pictures of a VLM result: what reaches the language model, and where an answer token looked.

The visual tokens of a VLM are laid out per tile (``meta["token_grid"]``, ``meta["num_tiles"]``,
tile-major, or tiles of different grids in ``meta["tile_grids"]``: LLaVA-OneVision's base view and its
anyres grid). Each tile is drawn on the part of the photo it shows (:func:`tile_panels`): the crops of a
split image (SmolVLM / Idefics3, ``meta["crop_grid"] = [rows, cols]``, crops row-major, then the global
view) each on its own region of one photo, and every tile that shows the whole image (the global view,
OneVision's base view and anyres grid, an unsplit image) as a panel of its own beside it. Never imports gradio.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from tomviz.render.overlay import display_image, group_overlay, heatmap_overlay
from tomviz.trace import Trace

WHOLE = (0.0, 0.0, 1.0, 1.0)
PANEL_GAP = 8  # pixels between panels
CROP_LINE = (255, 214, 0)  # the borders between crops


@dataclass(frozen=True)
class TilePanel:
    """One tile of visual tokens and the part of the photo it shows."""

    tokens: slice  # its visual tokens among the trace's input tokens
    grid: tuple[int, int]  # (rows, cols) of its tokens
    box: tuple[float, float, float, float]  # (left, top, right, bottom) of the photo it shows, as fractions
    label: str  # "crop 1, 2" (row, column, from 1), "global view", "whole image" or "tile 3"


def tile_slices(trace: Trace) -> list[tuple[slice, tuple[int, int]]]:
    """Each tile's visual tokens (a slice of the trace's input tokens) and its ``(rows, cols)`` grid."""
    grids = trace.meta.get("tile_grids") or [trace.meta["token_grid"]] * int(trace.meta["num_tiles"])
    out, start = [], 0
    for rows, cols in grids:
        out.append((slice(start, start + rows * cols), (int(rows), int(cols))))
        start += rows * cols
    return out


def tile_panels(trace: Trace) -> list[TilePanel]:
    """One :class:`TilePanel` per tile, in the trace's token order. With ``meta["crop_grid"]`` (rows x cols
    crops and a global view: as many tiles as ``rows * cols + 1``) the crops get their regions of the photo,
    row-major (the processor cuts equal crops from the resized photo); every other tile shows the whole photo."""
    slices = tile_slices(trace)
    crops = trace.meta.get("crop_grid")
    if crops and len(slices) == int(crops[0]) * int(crops[1]) + 1:
        rows, cols = int(crops[0]), int(crops[1])
        panels = []
        for index, (part, grid) in enumerate(slices[:-1]):
            r, c = divmod(index, cols)
            panels.append(TilePanel(part, grid, (c / cols, r / rows, (c + 1) / cols, (r + 1) / rows), f"crop {r + 1}, {c + 1}"))
        return panels + [TilePanel(*slices[-1], WHOLE, "global view")]
    if len(slices) == 1:
        return [TilePanel(*slices[0], WHOLE, "whole image")]
    return [TilePanel(part, grid, WHOLE, f"tile {index}") for index, (part, grid) in enumerate(slices)]


def panel_image(image: Image.Image, panel: TilePanel) -> Image.Image:
    """The part of ``image`` that ``panel`` shows."""
    if panel.box == WHOLE:
        return image
    left, top, right, bottom = panel.box
    width, height = image.size
    return image.crop((round(left * width), round(top * height), round(right * width), round(bottom * height)))


def tile_mosaic(image: Image.Image, panels: list[TilePanel], draw: Callable[[Image.Image, TilePanel], Image.Image],
                max_side: int = 448) -> Image.Image:
    """The panels side by side: the crops drawn each on its own region of one photo (yellow lines between
    them), then each whole-image tile as its own panel. ``draw(picture, panel)`` draws one tile's tokens on
    the picture it is given (its part of the photo, at display size)."""
    base = display_image(image, max_side)
    crops = [panel for panel in panels if panel.box != WHOLE]
    pictures = []
    if crops:
        canvas = base.copy()
        lines = ImageDraw.Draw(canvas)
        width, height = base.size
        for panel in crops:
            left, top, right, bottom = panel.box
            box = (round(left * width), round(top * height), round(right * width), round(bottom * height))
            canvas.paste(draw(base.crop(box), panel).resize((box[2] - box[0], box[3] - box[1])), box[:2])
            lines.rectangle(box, outline=CROP_LINE, width=1)
        pictures.append(canvas)
    pictures += [draw(base, panel) for panel in panels if panel.box == WHOLE]
    out = Image.new("RGB", (sum(p.width for p in pictures) + PANEL_GAP * (len(pictures) - 1),
                            max(p.height for p in pictures)), (255, 255, 255))
    x = 0
    for picture in pictures:
        out.paste(picture, (x, 0))
        x += picture.width + PANEL_GAP
    return out


def reaches_llm_overlay(image: Image.Image, boundary: Trace, max_side: int = 448) -> Image.Image:
    """The groups of visual tokens the LLM receives (boundary stage), each tile on the part of the photo it
    shows (:func:`tile_mosaic`); pruned tokens dark."""
    groups = boundary.groups(-1)
    return tile_mosaic(image, tile_panels(boundary),
                       lambda picture, panel: group_overlay(picture, groups[panel.tokens], panel.grid, 0, max_side=None),
                       max_side)


def answer_attention_overlay(image: Image.Image, boundary: Trace, attention: np.ndarray, step: int,
                             layer: int | None = None, max_side: int = 448) -> Image.Image:
    """Attention of answer step ``step`` to the visual tokens, spread through the trace onto every tile's part
    of the photo (:func:`tile_mosaic`), on one colour scale for all tiles.

    attention: ``[layers, A, V']`` (``VLMResult.answer_attention``); ``layer=None`` averages the layers.
    """
    values = attention[:, step].mean(0) if layer is None else attention[layer, step]  # [V']
    spread = boundary.spread(values, -1)  # [V], nan where pruned
    finite = spread[np.isfinite(spread)]
    scale = (float(finite.min()), float(np.percentile(finite, 99))) if finite.size else (0.0, 1.0)
    return tile_mosaic(image, tile_panels(boundary),
                       lambda picture, panel: heatmap_overlay(picture, spread[panel.tokens], panel.grid, max_side=None,
                                                              value_range=scale),
                       max_side)
