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


@functools.lru_cache(maxsize=32)
def patch_index_map(height: int, width: int, rows: int, cols: int) -> np.ndarray:
    """``[height, width]`` (read-only): the row-major index of the patch under every pixel
    (:func:`pixel_labels` of ``arange(rows*cols)``; cached: it depends on the sizes only)."""
    index = pixel_labels(np.arange(rows * cols).reshape(rows, cols), height, width)
    index.flags.writeable = False
    return index


def patch_sums(pixels: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """``(sums [rows*cols, 3] float64, counts [rows*cols])`` of the pixels ``[H, W, 3]`` under each patch
    (patch geometry of :func:`pixel_labels`). Sums of 8-bit values are exact in float64, so means built
    from them equal per-pixel means bit for bit."""
    height, width = pixels.shape[:2]
    row_of_y = np.minimum(np.arange(height) * rows // height, rows - 1)  # [H], non-decreasing
    col_of_x = np.minimum(np.arange(width) * cols // width, cols - 1)  # [W]
    starts_y = np.flatnonzero(np.diff(row_of_y, prepend=-1))  # first pixel row of each patch row that has pixels
    starts_x = np.flatnonzero(np.diff(col_of_x, prepend=-1))
    block = np.add.reduceat(np.add.reduceat(pixels, starts_y, axis=0, dtype=np.float64), starts_x, axis=1)
    sums = np.zeros((rows, cols, 3))  # a patch with no pixel (a picture smaller than the grid) sums to 0
    sums[np.ix_(row_of_y[starts_y], col_of_x[starts_x])] = block
    counts = np.outer(np.bincount(row_of_y, minlength=rows), np.bincount(col_of_x, minlength=cols)).reshape(-1)
    return sums.reshape(-1, 3), counts


def to_image(out: np.ndarray) -> Image.Image:
    """``[H, W, 3]`` float (0..255) → RGB picture, rounded half up (in place: ``out`` is consumed)."""
    np.add(out, 0.5, out=out)
    return Image.fromarray(np.clip(out, 0, 255, out=out).astype(np.uint8))


def per_pixel(per_patch: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """``[P, ...]`` per patch → ``[H, W, ...]`` per pixel through a patch index map ``[H, W]``
    (``np.take``: 3-4x faster than ``per_patch[patch]``, same values)."""
    return np.take(per_patch, patch, axis=0)


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
    rows, cols = int(patch_grid[0]), int(patch_grid[1])
    labels = patch_labels(groups, patch_grid, num_protected).reshape(-1)  # [rows*cols] group of each patch
    # The group means from per-patch sums (a few hundred patches, not every pixel): the same numbers as
    # per-pixel means over each group's pixels, whose sums are exact too.
    sums, counts = patch_sums(pixels, rows, cols)
    keep = labels >= 0
    num_groups = int(labels.max()) + 1 if keep.any() else 1
    group_counts = np.bincount(labels[keep], weights=counts[keep], minlength=num_groups)  # [G]
    group_sums = np.stack([np.bincount(labels[keep], weights=sums[keep, c], minlength=num_groups) for c in range(3)], axis=1)
    means = (group_sums / np.maximum(group_counts, 1)[:, None]).astype(np.float32)  # [G, 3]
    fill = means[np.maximum(labels, 0)]  # [rows*cols, 3] per patch
    fill[~keep] = PRUNED_COLOUR
    patch = patch_index_map(height, width, rows, cols)  # [H, W]
    alpha = float(np.clip(opacity, 0.0, 1.0))
    out = (1.0 - alpha) * pixels + alpha * per_pixel(fill, patch)
    if outline is not None:
        out[boundary_mask(per_pixel(labels, patch))] = outline
    return to_image(out)


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
    colour = lut[(scaled * 255).astype(np.int64)].reshape(-1, 3)  # [rows*cols, 3]
    alpha = (float(np.clip(opacity, 0.0, 1.0)) * finite.reshape(-1)).astype(np.float32)  # [rows*cols]; 0 where nan
    patch = patch_index_map(*pixels.shape[:2], rows, cols)  # [H, W]
    # Per patch first, then one gather per pixel (float32, like the other pictures).
    out = per_pixel(1.0 - alpha, patch)[..., None] * pixels + per_pixel(alpha[:, None] * colour, patch)
    return to_image(out)


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
