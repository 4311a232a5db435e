"""Figures of a sweep (rows from :func:`tomviz.sweep.sweep`): plotly for the app and HTML,
matplotlib for a PNG. Never imports gradio.

``rows`` are :class:`tomviz.sweep.SweepRow` (a layer above render: read by field name, not imported).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

SweepRow = Any  # tomviz.sweep.SweepRow

PANELS = (("cosine", "fidelity (cosine to unmerged)"), ("speedup", "speed-up (measured)"))


def _series(rows: Iterable[SweepRow]) -> dict[str, list[SweepRow]]:
    """Rows without errors, per ``input · method`` label, sorted by ratio."""
    series: dict[str, list[SweepRow]] = defaultdict(list)
    for row in rows:
        if row.error or row.cosine is None:
            continue
        label = f"{row.input} · {row.method}" if row.input else row.method
        series[label].append(row)
    return {k: sorted(v, key=lambda r: r.ratio) for k, v in series.items()}


def sweep_figure(rows: Iterable[SweepRow]):
    """A plotly figure: fidelity and speed-up against the merge ratio, one line per method."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=[title for _, title in PANELS])
    for index, (label, points) in enumerate(_series(rows).items()):
        ratios = [p.ratio for p in points]
        for col, (key, _) in enumerate(PANELS, start=1):
            fig.add_trace(
                go.Scatter(
                    x=ratios, y=[getattr(p, key) for p in points], mode="lines+markers", name=label,
                    legendgroup=label, showlegend=col == 1, line={"color": series_colour(index)},
                ),
                row=1, col=col,
            )
    fig.update_xaxes(title_text="merge ratio")
    fig.update_layout(height=420, margin={"l": 40, "r": 20, "t": 40, "b": 40})
    return fig


def sweep_figure_png(rows: Iterable[SweepRow], path) -> None:
    """The same two panels as a PNG (matplotlib; plotly's image export needs kaleido)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for index, (label, points) in enumerate(_series(rows).items()):
        for ax, (key, _) in zip(axes, PANELS):
            ax.plot([p.ratio for p in points], [getattr(p, key) for p in points], marker="o", label=label, color=series_colour(index))
    for ax, (_, title) in zip(axes, PANELS):
        ax.set_title(title)
        ax.set_xlabel("merge ratio")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def series_colour(index: int) -> str:
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
    return palette[index % len(palette)]
