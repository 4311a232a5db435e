"""Pictures of merged groups over the input image (PIL in, PIL out; no gradio).

Shapes: ``groups`` is ``[N0]`` (one group id per input token, -1 = pruned); the
first ``num_protected`` tokens are CLS/distillation/registers, the rest are the
patches in row-major order on ``patch_grid = (rows, cols)``. The model sees the
whole image resized (never cropped), so patch (i, j) covers the same fraction of
the displayed picture whatever its aspect ratio.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from tomviz.trace import on_patch_grid as patch_labels  # noqa: F401  (patch geometry: tomviz/trace.py)
from tomviz.trace import pixel_labels  # noqa: F401

PRUNED_COLOUR = (40, 40, 40)


def display_image(image: Image.Image, max_side: int = 448) -> Image.Image:
    """An RGB copy of ``image`` no longer than ``max_side`` on either side (aspect kept)."""
    small = image.convert("RGB") if image.mode != "RGB" else image.copy()
    small.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return small


def boundary_mask(label_map: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: pixels whose right or lower neighbour belongs to another group."""
    edge = np.zeros(label_map.shape, dtype=bool)
    edge[:, :-1] |= label_map[:, :-1] != label_map[:, 1:]
    edge[:-1, :] |= label_map[:-1, :] != label_map[1:, :]
    return edge


def group_mean_colours(pixels: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """Mean RGB of each group: ``pixels [H, W, 3]``, ``label_map [H, W]`` → ``[G, 3]`` (G = max id + 1).

    Pruned pixels (label -1) are ignored; groups with no pixel get black.
    """
    flat = label_map.reshape(-1)
    keep = flat >= 0
    num_groups = int(flat.max()) + 1 if keep.any() else 1
    counts = np.bincount(flat[keep], minlength=num_groups).astype(np.float64)  # [G]
    rgb = pixels.reshape(-1, 3)[keep].astype(np.float64)  # [P, 3]
    sums = np.stack([np.bincount(flat[keep], weights=rgb[:, c], minlength=num_groups) for c in range(3)], axis=1)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)  # [G, 3]


def group_overlay(
    image: Image.Image,
    groups: np.ndarray,
    patch_grid: Sequence[int],
    num_protected: int,
    opacity: float = 0.8,
    outline: tuple[int, int, int] | None = (255, 255, 255),
    max_side: int | None = 448,
) -> Image.Image:
    """The ToMe-style picture: every group filled with its mean colour and outlined.

    image: the RGB photo. groups: ``[N0]`` group ids after some layer.
    opacity: 0 shows the photo, 1 only the group colours. outline: None for no outlines.
    Returns an RGB image of the (downscaled to ``max_side``) photo's size.
    """
    base = display_image(image, max_side) if max_side else image.convert("RGB")
    pixels = np.asarray(base, dtype=np.float32)  # [H, W, 3]
    height, width = pixels.shape[:2]
    label_map = pixel_labels(patch_labels(groups, patch_grid, num_protected), height, width)  # [H, W]
    means = group_mean_colours(pixels, label_map)  # [G, 3]
    fill = means[np.maximum(label_map, 0)]  # [H, W, 3]
    fill[label_map < 0] = PRUNED_COLOUR
    alpha = float(np.clip(opacity, 0.0, 1.0))
    out = (1.0 - alpha) * pixels + alpha * fill
    if outline is not None:
        out[boundary_mask(label_map)] = outline
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


@functools.lru_cache(maxsize=8)
def colour_table(colormap: str) -> np.ndarray:
    """``[256, 3]`` float32 RGB (0..255) of a matplotlib colour map."""
    from matplotlib import colormaps

    return (colormaps[colormap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.float32)


def heatmap_overlay(
    image: Image.Image,
    values: np.ndarray,
    patch_grid: Sequence[int],
    opacity: float = 0.6,
    colormap: str = "inferno",
    max_side: int | None = 448,
    value_range: tuple[float, float] | None = None,
) -> Image.Image:
    """Per-patch values (``[rows*cols]``, nan = none) drawn as a colour map over the photo.

    Values are scaled to [0, 1] between their minimum and 99th percentile (a few outlier
    patches, such as ViT "register-like" high-norm tokens, would otherwise wash out the rest),
    or between ``value_range = (low, high)`` when given (a fixed scale, e.g. distances in 0..1);
    nan patches show the photo only.
    """
    base = display_image(image, max_side) if max_side else image.convert("RGB")
    pixels = np.asarray(base, dtype=np.float32)  # [H, W, 3]
    rows, cols = int(patch_grid[0]), int(patch_grid[1])
    grid = np.asarray(values, dtype=np.float32).reshape(rows, cols)
    finite = np.isfinite(grid)
    if value_range is not None:
        low, high = float(value_range[0]), float(value_range[1])
    else:
        low, high = (float(grid[finite].min()), float(np.percentile(grid[finite], 99))) if finite.any() else (0.0, 1.0)
    scaled = np.clip(np.where(finite, (grid - low) / (high - low if high > low else 1.0), 0.0), 0.0, 1.0)
    lut = colour_table(colormap)  # [256, 3]
    colour = lut[(scaled * 255).astype(np.int64)]  # [rows, cols, 3]
    pixel_idx = pixel_labels(np.arange(rows * cols).reshape(rows, cols), *pixels.shape[:2])  # [H, W]
    colour_px = colour.reshape(-1, 3)[pixel_idx]  # [H, W, 3]
    alpha = float(np.clip(opacity, 0.0, 1.0)) * finite.reshape(-1)[pixel_idx][..., None]  # [H, W, 1]
    out = (1.0 - alpha) * pixels + alpha * colour_px
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def small_multiples(
    image: Image.Image,
    layer_groups: Sequence[np.ndarray],
    patch_grid: Sequence[int],
    num_protected: int,
    token_counts: Sequence[int] | None = None,
    tile: int = 112,
    columns: int = 6,
    selected: int | None = None,
) -> Image.Image:
    """A grid of small overlays, one per layer (``layer_groups[l]`` is ``[N0]``), captioned
    "L<l+1> · <tokens>"; the ``selected`` layer (0-based) gets a coloured frame."""
    base = display_image(image, tile)
    caption = 14
    width, height = base.size
    num = len(layer_groups)
    columns = max(1, min(columns, num))
    rows = (num + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (width + 4) + 4, rows * (height + caption + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for l, groups in enumerate(layer_groups):
        x = 4 + (l % columns) * (width + 4)
        y = 4 + (l // columns) * (height + caption + 4)
        sheet.paste(group_overlay(base, groups, patch_grid, num_protected, opacity=0.9, max_side=None), (x, y + caption))
        text = f"L{l + 1}" + (f" · {token_counts[l]}" if token_counts is not None else "")
        draw.text((x + 2, y + 1), text, fill=(0, 0, 0))
        if selected == l:
            draw.rectangle((x - 2, y + caption - 2, x + width + 1, y + caption + height + 1), outline=(255, 90, 0), width=2)
    return sheet
