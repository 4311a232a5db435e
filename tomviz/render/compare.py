"""Two merge settings on the same input: where their groups differ (numpy, PIL, plotly; no gradio).

The difference map is per input token. Token ``i`` sits in group ``A(i)`` under setting A and
``B(i)`` under setting B, both seen as sets of input tokens (``groups [N0]`` from
:meth:`tomviz.trace.Trace.groups`). Its value is the Jaccard distance of the two sets::

    d(i) = 1 - |A(i) ∩ B(i)| / |A(i) ∪ B(i)|

0 means both settings put exactly the same tokens with ``i``; the larger, the less the two groups
overlap. A token kept by both is in both sets, so its distance stays below 1. Pruned tokens (group -1) are handled apart: pruned in both → 0, pruned in only one → 1
(the strongest disagreement: one setting dropped the token, the other kept it).

All of it costs O(N0): the intersections are counts of (group in A, group in B) pairs.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from PIL import Image

from tomviz.fidelity import EmbeddingFidelity
from tomviz.render.overlay import heatmap_overlay
from tomviz.render.text import display_pieces
from tomviz.speed import SpeedReport
from tomviz.trace import on_patch_grid

DIFF_COLORMAP = "magma"


def jaccard_distance(groups_a: np.ndarray, groups_b: np.ndarray) -> np.ndarray:
    """``[N0]`` Jaccard distance between each token's group under A and under B (see the module docstring).

    groups_a, groups_b: ``[N0]`` int group ids of the same input tokens, -1 = pruned.
    """
    a = np.asarray(groups_a, dtype=np.int64).reshape(-1)
    b = np.asarray(groups_b, dtype=np.int64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"the two settings cover different inputs: {a.shape[0]} vs {b.shape[0]} tokens")
    kept_a, kept_b = a >= 0, b >= 0
    both = kept_a & kept_b
    out = np.where(kept_a == kept_b, 0.0, 1.0)  # pruned in both → 0, in only one → 1
    if not both.any():
        return out
    size_a = np.bincount(a[kept_a])  # [G_A] input tokens per group (pruned excluded)
    size_b = np.bincount(b[kept_b])  # [G_B]
    pairs = a[both] * (int(b.max()) + 1) + b[both]  # one code per (group in A, group in B)
    codes, inverse, shared = np.unique(pairs, return_inverse=True, return_counts=True)
    inter = shared[inverse].astype(np.float64)  # [K] |A(i) ∩ B(i)| for the tokens kept by both
    union = size_a[a[both]] + size_b[b[both]] - inter  # [K]
    out[both] = 1.0 - inter / union
    return out


def difference_stats(distance: np.ndarray) -> dict[str, float]:
    """``changed``: fraction of tokens whose group differs (d > 0); ``mean``: mean distance."""
    d = np.asarray(distance, dtype=np.float64)
    if d.size == 0:
        return {"changed": 0.0, "mean": 0.0}
    return {"changed": float((d > 1e-12).mean()), "mean": float(d.mean())}


def difference_overlay(image: Image.Image, distance: np.ndarray, patch_grid: Sequence[int], num_protected: int,
                       opacity: float = 0.75) -> Image.Image:
    """The patches' distances (``distance [N0]``, protected tokens dropped) over the photo, on a fixed 0..1 scale
    (dark = same group in both settings, bright = different)."""
    patches = on_patch_grid(np.asarray(distance, dtype=np.float32), patch_grid, num_protected).reshape(-1)  # [rows*cols]
    return heatmap_overlay(image, patches, patch_grid, opacity=opacity, colormap=DIFF_COLORMAP, value_range=(0.0, 1.0))


def difference_tokens(tokens: Sequence[str], distance: np.ndarray) -> list[tuple[str, float | None]]:
    """``[(text, score)]`` for gr.HighlightedText: each input token with its distance on the fixed 0..1 scale
    (None = same group in both settings, not highlighted)."""
    return [(piece, float(d) if d > 1e-12 else None) for piece, d in zip(display_pieces(list(tokens)), np.asarray(distance, dtype=float))]


def comparison_figure(names: Sequence[str], cosines: Sequence[float], merged_ms: Sequence[float], unmerged_ms: float,
                      gflops: Sequence[float], unmerged_gflops: float, height: int = 320) -> go.Figure:
    """Three panels, one bar per setting (x = the part of ``names[i]`` before ":", e.g. "A"; the full name on
    hover): fidelity (cosine to unmerged), measured latency and analytic GFLOPs, the unmerged model dashed."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=["cosine", "latency ms", "GFLOPs"])
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    short = [str(n).split(":")[0] for n in names]
    for col, values in enumerate((cosines, merged_ms, gflops), start=1):
        fig.add_trace(go.Bar(x=short, y=[float(v) for v in values], customdata=list(names), showlegend=False,
                             marker_color=[colours[i % len(colours)] for i in range(len(names))],
                             hovertemplate="%{customdata}: %{y:.4g}<extra></extra>"), row=1, col=col)
    for col, value in ((2, unmerged_ms), (3, unmerged_gflops)):
        fig.add_hline(y=float(value), line_dash="dash", line_color="#555", row=1, col=col)
    low = min([float(c) for c in cosines if np.isfinite(c)] or [0.0])
    fig.update_yaxes(range=[max(0.0, low - 0.05), 1.0], row=1, col=1)
    fig.update_layout(height=height, margin=dict(l=40, r=10, t=40, b=30),
                      title=dict(text="dashed: unmerged", font=dict(size=11), x=0.99, xanchor="right", y=0.02))
    return fig


def comparison_table(names: Sequence[str], fidelities: Sequence[EmbeddingFidelity], speeds: Sequence[SpeedReport],
                     final_tokens: Sequence[int]) -> list[list[Any]]:
    """Rows ``[setting, tokens at the end, cosine, top-1 kept, latency ms, speed-up, GFLOPs]``, one per setting
    (top-1 kept is "" for models without classes)."""
    rows = []
    for name, fid, speed, tokens in zip(names, fidelities, speeds, final_tokens):
        kept = fid.top1_kept
        rows.append([name, int(tokens), round(float(fid.cosine), 4), "" if kept is None else ("yes" if kept else "no"),
                     round(speed.merged_s * 1e3, 1), round(float(speed.speedup), 2), round(speed.merged_gflops_total, 2)])
    return rows
