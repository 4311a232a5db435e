"""Plotly figures of a trace (no gradio). Layers are shown 1-based ("after layer l")."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from tomviz.render.overlay import patch_labels
from tomviz.trace import Trace

_MARGIN = dict(l=40, r=10, t=36, b=36)


def _scrambled(ids: np.ndarray) -> np.ndarray:
    """Map group ids to colour positions in [0, 1) so that neighbouring ids get distant colours."""
    golden = 0.6180339887
    return np.where(ids >= 0, (ids * golden) % 1.0, np.nan)


def cluster_map_figure(trace: Trace, layer: int, height: int = 380) -> go.Figure:
    """Interactive map of the patch grid after ``layer`` (0-based): colour = group (keyed on its
    smallest member, so colours stay put from layer to layer); hover shows
    the group id, its size (input tokens) and the layer (1-based) where it first merged."""
    num_protected = int(trace.meta.get("num_protected", 1))
    grid = trace.meta["patch_grid"]
    groups = trace.groups(layer)  # [N0]
    labels = patch_labels(groups, grid, num_protected)  # [rows, cols]
    sizes = trace.sizes(layer)  # [N_l]
    joined = patch_labels(trace.joined_at(layer), grid, num_protected)  # [rows, cols]
    size_map = np.where(labels >= 0, sizes[np.maximum(labels, 0)], 0).astype(int)
    joined_text = np.where(joined >= 0, (joined + 1).astype(str), "never")
    custom = np.stack([labels.astype(str), size_map.astype(str), joined_text], axis=-1)  # [rows, cols, 3]
    fig = go.Figure(
        go.Heatmap(
            z=_scrambled(patch_labels(trace.stable_groups(layer), grid, num_protected)), customdata=custom, colorscale="Turbo", showscale=False, zmin=0, zmax=1,
            hovertemplate="patch (%{y}, %{x})<br>group %{customdata[0]}<br>size %{customdata[1]}"
            "<br>joined at layer %{customdata[2]}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showticklabels=False)
    fig.update_xaxes(showticklabels=False, constrain="domain")
    fig.update_layout(
        title=f"Groups after layer {layer + 1}: {trace.layers[layer].num_tokens} tokens",
        height=height, margin=_MARGIN,
    )
    return fig


def token_count_figure(traces: dict[str, Trace] | Trace, height: int = 300) -> go.Figure:
    """Tokens after each layer (layer 0 = the input) for one trace or several named ones."""
    traces = {"tokens": traces} if isinstance(traces, Trace) else traces
    fig = go.Figure()
    for name, trace in traces.items():
        counts = trace.token_counts()
        fig.add_trace(go.Scatter(x=list(range(len(counts))), y=counts, mode="lines+markers", name=name))
    fig.update_layout(
        title="Token count per layer", xaxis_title="after layer (0 = input)", yaxis_title="tokens",
        height=height, margin=_MARGIN, showlegend=len(traces) > 1, yaxis_rangemode="tozero",
    )
    return fig


def gflops_figure(merged: Sequence[float], unmerged: Sequence[float], height: int = 300) -> go.Figure:
    """Analytic GFLOPs per layer, merged vs unmerged (``[L]`` each)."""
    layers = list(range(1, len(merged) + 1))
    fig = go.Figure(
        [
            go.Bar(x=layers, y=list(unmerged), name=f"unmerged ({sum(unmerged):.2f} total)", marker_color="#9aa5b1"),
            go.Bar(x=layers, y=list(merged), name=f"merged ({sum(merged):.2f} total)", marker_color="#ef6c00"),
        ]
    )
    fig.update_layout(
        title="GFLOPs per layer (attention + MLP)", xaxis_title="layer", yaxis_title="GFLOPs", barmode="group",
        height=height, margin=_MARGIN, legend=dict(orientation="h", y=-0.25),
    )
    return fig


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
