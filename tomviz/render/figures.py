"""Plotly figures of a trace (no gradio). Layers are shown 1-based ("after layer l")."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from tomviz.render.groups import map_colours, merged_group_count, patch_groups
from tomviz.trace import Trace

_MARGIN = dict(l=40, r=10, t=36, b=36)
# A legend under the plot starts this far below the x axis: under its tick labels and its title (≈ 40 px).
LEGEND_BELOW_AXIS_PX = 48


def _figure(data: list[dict], **layout) -> go.Figure:
    """A figure from plain trace and layout dicts, written in plotly's own nested names, without plotly's
    property validation (``_validate=False``): it costs 5-10 ms a figure on the app's per-request path
    and the same JSON comes out (the figures here are fixed code, checked by tests/render)."""
    return go.Figure(dict(data=data, layout=layout), _validate=False)


def _outline_segments(labels: np.ndarray, merged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Line segments (plotly x/y arrays, NaN-separated) between neighbouring patches of different groups
    where at least one side is a merged group; patch (i, j) is centred on x=j, y=i."""
    right_i, right_j = np.nonzero((labels[:, :-1] != labels[:, 1:]) & (merged[:, :-1] | merged[:, 1:]))
    below_i, below_j = np.nonzero((labels[:-1, :] != labels[1:, :]) & (merged[:-1, :] | merged[1:, :]))
    gap = np.full(right_i.shape[0] + below_i.shape[0], np.nan)
    x0 = np.concatenate([right_j + 0.5, below_j - 0.5])  # [S] segment starts and ends
    x1 = np.concatenate([right_j + 0.5, below_j + 0.5])
    y0 = np.concatenate([right_i - 0.5, below_i + 0.5])
    y1 = np.concatenate([right_i + 0.5, below_i + 0.5])
    return np.stack([x0, x1, gap], axis=1).reshape(-1), np.stack([y0, y1, gap], axis=1).reshape(-1)


def cluster_map_figure(trace: Trace, layer: int, height: int = 380, token: int | None = None) -> go.Figure:
    """Interactive (hover) map of the patch grid after ``layer`` (0-based), for notebooks: the colours of
    :func:`~tomviz.render.groups.map_colours` (a patch still alone light grey, a merged group its stable
    colour, ``token``'s group magenta and the rest grey) and white outlines around merged groups. Hover
    shows the group id, its size (input tokens) and the layer (1-based) where it first merged; the title
    counts the merged groups. The app draws the same map as a picture
    (:func:`~tomviz.render.groups.cluster_map_picture`): a click on it selects a group, and re-rendering
    this figure costs a browser ≈ 90 ms per layer change (BENCHMARKS.md, App latency)."""
    groups = trace.groups(layer)  # [N0]
    labels = trace.on_patch_grid(groups)  # [rows, cols]
    sizes = trace.sizes(layer)  # [N_l]
    joined = trace.on_patch_grid(trace.joined_at(layer))  # [rows, cols]
    size_map = np.where(labels >= 0, sizes[np.maximum(labels, 0)], 0).astype(int)
    joined_text = np.where(joined >= 0, (joined + 1).astype(str), "never")
    custom = np.stack([labels.astype(str), size_map.astype(str), joined_text], axis=-1)  # [rows, cols, 3]
    merged = size_map >= 2
    rgb = map_colours(patch_groups(trace, layer, token))  # [rows, cols, 3]
    xs, ys = _outline_segments(labels, merged)
    return _figure(
        [
            dict(type="image", z=rgb.round().astype(np.uint8), customdata=custom,
                 hovertemplate="patch (%{y}, %{x})<br>group %{customdata[0]}<br>size %{customdata[1]}"
                 "<br>joined at layer %{customdata[2]}<extra></extra>"),
            dict(type="scatter", x=xs, y=ys, mode="lines", line=dict(color="white", width=2), hoverinfo="skip",
                 showlegend=False),
        ],
        title=dict(text=f"Groups after layer {layer + 1}: {trace.layers[layer].num_tokens} tokens, "
                        f"{merged_group_count(trace, layer)} merged groups (≥ 2 patches)"),
        height=height, margin=_MARGIN, plot_bgcolor="white",
        xaxis=dict(showticklabels=False, showgrid=False, zeroline=False),
        yaxis=dict(showticklabels=False, showgrid=False, zeroline=False),
    )


def token_count_figure(traces: dict[str, Trace] | Trace, height: int = 300) -> go.Figure:
    """Tokens after each layer (layer 0 = the input) for one trace or several named ones."""
    traces = {"tokens": traces} if isinstance(traces, Trace) else traces
    data = []
    for name, trace in traces.items():
        counts = trace.token_counts()
        data.append(dict(type="scatter", x=list(range(len(counts))), y=counts, mode="lines+markers", name=name))
    return _figure(
        data, title=dict(text="Token count per layer"), xaxis=dict(title=dict(text="after layer (0 = input)")),
        yaxis=dict(title=dict(text="tokens"), rangemode="tozero"), height=height, margin=_MARGIN,
        showlegend=len(traces) > 1,
    )


def gflops_figure(merged: Sequence[float], unmerged: Sequence[float], height: int = 300) -> go.Figure:
    """Analytic GFLOPs per layer, merged vs unmerged (``[L]`` each)."""
    layers = list(range(1, len(merged) + 1))
    margin = {**_MARGIN, "b": LEGEND_BELOW_AXIS_PX + 30}  # tick labels and the axis title, then one legend row
    return _figure(
        [
            dict(type="bar", x=layers, y=list(unmerged), name=f"unmerged ({sum(unmerged):.2f} total)",
                 marker=dict(color="#9aa5b1")),
            dict(type="bar", x=layers, y=list(merged), name=f"merged ({sum(merged):.2f} total)",
                 marker=dict(color="#ef6c00")),
        ],
        title=dict(text="GFLOPs per layer (attention + MLP)"), xaxis=dict(title=dict(text="layer")),
        yaxis=dict(title=dict(text="GFLOPs")), barmode="group", height=height, margin=margin,
        legend=dict(orientation="h", yanchor="top", y=-LEGEND_BELOW_AXIS_PX / (height - margin["t"] - margin["b"])),
    )


def group_attention_figure(names: Sequence[str], values: Sequence[float], layer: int, height: int = 320) -> go.Figure:
    """Horizontal bars: CLS attention received by each group (``names[g]``, ``values[g]``) inside ``layer``."""
    order = np.argsort(np.asarray(values, dtype=float))  # largest on top
    fig = go.Figure(
        go.Bar(
            x=[float(values[i]) for i in order], y=[names[i] for i in order], orientation="h",
            marker_color="#ef6c00", hovertemplate="%{y}<br>CLS attention %{x:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"CLS attention per group in layer {layer + 1} (CLS itself left out)", xaxis_title="attention (mean over heads)",
        height=max(height, 18 * len(names) + 80), margin=dict(l=140, r=10, t=36, b=36), yaxis=dict(dtick=1),
    )
    return fig
