"""Pictures of scores: Banzhaf values over the image and tokens, interaction matrices, top pairs,
and CLIP image-group × word interactions (PIL and plotly; no gradio).

Shapes: ``grid`` is ``[rows, cols]`` over the patches; a result's ``groups`` are group ids after
its ``layer``; ``names[k]`` labels player k.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageFont

from tomviz.render.overlay import display_image, heatmap_overlay
from tomviz.render.text import display_pieces, group_names
from tomviz.trace import Trace

POSITIVE = (200, 40, 40)  # interactions / values above zero
NEGATIVE = (40, 90, 200)


def value_overlay(
    image: Image.Image,
    grid: np.ndarray,
    opacity: float = 0.65,
    colormap: str = "RdBu_r",
    symmetric: bool = True,
    max_side: int | None = 448,
) -> Image.Image:
    """Signed per-patch values ``[rows, cols]`` (nan = none) over the photo.

    symmetric: the colour scale is ±max|value| (white = 0, red > 0, blue < 0 with ``RdBu_r``);
    otherwise min..max. Returns RGB at the (downscaled) photo's size (drawn by
    :func:`~tomviz.render.overlay.heatmap_overlay` on that fixed scale).
    """
    grid = np.asarray(grid, dtype=np.float32)
    finite = np.isfinite(grid)
    if symmetric:
        bound = float(np.abs(grid[finite]).max()) if finite.any() else 1.0
        value_range = (-bound, bound)
    else:
        value_range = (float(grid[finite].min()), float(grid[finite].max())) if finite.any() else (0.0, 1.0)
    return heatmap_overlay(image, grid.reshape(-1), grid.shape, opacity=opacity, colormap=colormap,
                           max_side=max_side, value_range=value_range)


def token_values(tokens: Sequence[str], values: np.ndarray) -> list[tuple[str, float | None]]:
    """``[(text, score)]`` for gr.HighlightedText: per-input-token values scaled to [-1, 1] by max|value|
    (nan → None: protected or pruned tokens)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    bound = float(np.abs(values[finite]).max()) if finite.any() else 1.0
    bound = bound if bound > 0 else 1.0
    return [(piece, (float(v / bound) if np.isfinite(v) else None)) for piece, v in zip(display_pieces(list(tokens)), values)]


def group_labels(trace: Trace, layer: int, groups: np.ndarray) -> list[str]:
    """Labels of ``groups`` (ids at ``layer``): the member tokens for text (``"g3: the · dog"``), ``"g3 (5 patches)"`` for images."""
    if trace.meta.get("tokens") and not trace.meta.get("patch_grid"):
        names = group_names(trace, layer, max_chars=28)
        return [names[int(g)] for g in groups]
    sizes = trace.sizes(layer)
    return [f"g{int(g)} ({int(sizes[int(g)])} patches)" for g in groups]


def values_figure(values: np.ndarray, stderr: np.ndarray, names: Sequence[str], title: str, height: int = 340) -> go.Figure:
    """Bars of the groups' (or words') Banzhaf values with ±1 standard error, largest on top."""
    order = np.argsort(np.nan_to_num(np.asarray(values, dtype=float)))
    fig = go.Figure(
        go.Bar(
            x=[float(values[i]) for i in order], y=[names[i] for i in order], orientation="h",
            error_x=dict(type="data", array=[float(stderr[i]) for i in order], visible=True),
            marker_color=[("#c62828" if values[i] >= 0 else "#1565c0") for i in order],
            hovertemplate="%{y}<br>value %{x:.4f}<extra></extra>",
        )
    )
    fig.update_layout(title=title, xaxis_title="Banzhaf value (± 1 s.e.)", height=max(height, 16 * len(names) + 90),
                      margin=dict(l=150, r=10, t=40, b=36))
    return fig


def interaction_figure(
    interactions: np.ndarray,
    row_names: Sequence[str],
    col_names: Sequence[str] | None = None,
    stderr: np.ndarray | None = None,
    title: str = "Pairwise Banzhaf interaction",
    height: int = 460,
) -> go.Figure:
    """A heatmap of ``interactions`` ``[n_rows, n_cols]`` (symmetric colour scale; hover: both names,
    the interaction and its standard error)."""
    col_names = list(row_names) if col_names is None else list(col_names)
    z = np.asarray(interactions, dtype=float)
    se = np.zeros_like(z) if stderr is None else np.asarray(stderr, dtype=float)
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() and np.nanmax(np.abs(z)) > 0 else 1.0
    fig = go.Figure(
        go.Heatmap(
            z=z, x=col_names, y=list(row_names), customdata=se, colorscale="RdBu", reversescale=True,
            zmin=-bound, zmax=bound, colorbar=dict(title="I"),
            hovertemplate="%{y}<br>× %{x}<br>interaction %{z:.4f} ± %{customdata:.4f}<extra></extra>",
        )
    )
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis=dict(showticklabels=len(col_names) <= 40), yaxis=dict(showticklabels=len(row_names) <= 40, autorange="reversed"))
    return fig


def pairs_rows(pairs: Sequence[tuple[int, int, float]], names_a: Sequence[str], names_b: Sequence[str] | None = None,
               stderr: np.ndarray | None = None) -> list[list[Any]]:
    """Rows ``[a, b, interaction, s.e.]`` for a table of the strongest pairs (player indices)."""
    names_b = names_a if names_b is None else names_b
    return [[names_a[i], names_b[j], round(v, 5), (None if stderr is None else round(float(stderr[i, j]), 5))]
            for i, j, v in pairs]


def group_centres(trace: Trace, layer: int, width: int, height: int) -> dict[int, tuple[float, float]]:
    """Pixel centre (x, y) of every group after ``layer`` in a picture of ``width × height``."""
    labels = trace.on_patch_grid(trace.groups(layer))  # [rows, cols]
    rows, cols = labels.shape
    centres = {}
    for g in np.unique(labels[labels >= 0]):
        r, c = np.nonzero(labels == g)
        centres[int(g)] = ((c.mean() + 0.5) * width / cols, (r.mean() + 0.5) * height / rows)
    return centres


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def pairs_overlay(image: Image.Image, trace: Trace, layer: int, groups: np.ndarray,
                  pairs: Sequence[tuple[int, int, float]], max_side: int = 448) -> Image.Image:
    """The photo with a line between the centres of each pair of groups (red > 0, blue < 0,
    width ∝ |interaction|); ``pairs`` hold indices into ``groups`` (ids at ``layer``)."""
    base = display_image(image, max_side)
    draw = ImageDraw.Draw(base)
    centres = group_centres(trace, layer, *base.size)
    top = max((abs(v) for *_, v in pairs), default=1.0) or 1.0
    for rank, (i, j, v) in enumerate(pairs):
        a, b = centres.get(int(groups[i])), centres.get(int(groups[j]))
        if a is None or b is None:
            continue
        draw.line([a, b], fill=POSITIVE if v >= 0 else NEGATIVE, width=max(1, int(round(6 * abs(v) / top))))
        for point in (a, b):
            draw.ellipse([point[0] - 4, point[1] - 4, point[0] + 4, point[1] + 4], fill=(255, 255, 255), outline=(0, 0, 0))
        draw.text(((a[0] + b[0]) / 2, (a[1] + b[1]) / 2), str(rank + 1), fill=(255, 255, 255), font=_font(14),
                  stroke_width=2, stroke_fill=(0, 0, 0))
    return base


def hbi_lines(image: Image.Image, trace: Trace, layer: int, groups: np.ndarray, words: Sequence[str],
              pairs: Sequence[tuple[int, int, float]], max_side: int = 360) -> Image.Image:
    """The photo on the left, the prompt's words in a column on the right, and a line from each
    image region to each word of the strongest pairs (``(group player, word, interaction)``;
    red > 0, blue < 0, width ∝ |interaction|)."""
    photo = display_image(image, max_side)
    w, h = photo.size
    column = 180
    row_h = max(18, min(34, (h - 20) // max(1, len(words))))
    height = max(h, row_h * len(words) + 20)
    canvas = Image.new("RGB", (w + column, height), (255, 255, 255))
    canvas.paste(photo, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(15)
    anchors = []
    for k, word in enumerate(words):
        y = 10 + k * row_h + row_h / 2
        draw.text((w + 40, y - 8), word, fill=(0, 0, 0), font=font)
        anchors.append((w + 34, y))
    centres = group_centres(trace, layer, w, h)
    top = max((abs(v) for *_, v in pairs), default=1.0) or 1.0
    for g, word, v in pairs:
        start = centres.get(int(groups[g]))
        if start is None:
            continue
        draw.line([start, anchors[word]], fill=POSITIVE if v >= 0 else NEGATIVE, width=max(1, int(round(6 * abs(v) / top))))
        draw.ellipse([start[0] - 4, start[1] - 4, start[0] + 4, start[1] + 4], fill=(255, 255, 255), outline=(0, 0, 0))
    return canvas
