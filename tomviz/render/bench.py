"""Pictures of a benchmark summary (:func:`tomviz.bench.results.summarise`): the Pareto plot of fidelity
or accuracy against speed-up and the HTML report. Plotly only; never imports gradio or ray."""
from __future__ import annotations

import html
import math
from typing import Any, Sequence

from tomviz.render.sweep import series_colour

BASELINE = "random"  # the method drawn as the baseline (dashed grey)

Y_METRICS = {
    "cosine": "fidelity (cosine to unmerged)",
    "top1_agree": "top-1 agreement with unmerged",
    "top5_overlap": "top-5 overlap with unmerged",
    "accuracy": "accuracy (labels)",
}
X_METRICS = {"speedup": "speed-up, measured (unmerged s / merged s)", "flops_speedup": "speed-up, analytic (GFLOPs ratio)"}
TABLE_COLUMNS = (
    ("model", "model"), ("setting", "setting"), ("ran", "inputs"), ("errors", "errors"), ("tokens_out", "tokens at the end"),
    ("cosine", "cosine"), ("top1_agree", "top-1 agree"), ("top5_overlap", "top-5 overlap"), ("accuracy", "accuracy"),
    ("gflops", "GFLOPs"), ("flops_speedup", "GFLOPs speed-up"), ("throughput", "inputs/s"), ("speedup", "speed-up"),
    ("method_ms_per_frame", "method ms/frame (clips)"), ("first_error", "first error"),
)


def available_metrics(summary: Sequence[dict[str, Any]]) -> list[str]:
    """The y metrics that have values in this summary (accuracy only with labels, top-k only for classifiers)."""
    return [k for k in Y_METRICS if any(e.get(k) is not None for e in summary)]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both x and y (higher is better on both), by x."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def _series_name(entry: dict[str, Any], models: int, props: int) -> str:
    name = f"{entry['method']} (baseline)" if entry["method"] == BASELINE else str(entry["method"])
    if entry.get("schedule") and entry["schedule"] != "constant":
        name += f" · {entry['schedule']}"
    if props > 1:
        name += " · prop attn" if entry.get("prop_attn") else " · no prop attn"
    return f"{entry['model']} · {name}" if models > 1 else name


def pareto_figure(summary: Sequence[dict[str, Any]], y: str = "cosine", x: str = "speedup"):
    """Plotly figure: ``y`` against ``x`` per setting, one line per method (random baseline dashed grey),
    the unmerged model as a star at speed-up 1, and the Pareto front over all settings."""
    import plotly.graph_objects as go

    points = [e for e in summary if e.get(x) is not None and e.get(y) is not None]
    models = len({e["model"] for e in summary})
    props = len({bool(e.get("prop_attn")) for e in summary})
    series: dict[str, list[dict[str, Any]]] = {}
    for entry in points:
        series.setdefault(_series_name(entry, models, props), []).append(entry)
    fig = go.Figure()
    for index, (name, entries) in enumerate(series.items()):
        entries = sorted(entries, key=lambda e: e[x])
        baseline = entries[0]["method"] == BASELINE
        fig.add_trace(go.Scatter(
            x=[e[x] for e in entries], y=[e[y] for e in entries], mode="lines+markers", name=name,
            line={"color": "#7f7f7f" if baseline else series_colour(index), "dash": "dash" if baseline else "solid", "width": 2},
            marker={"symbol": "x" if baseline else "circle", "size": 8},
            text=[_hover(e) for e in entries], hovertemplate="%{text}<extra></extra>",
        ))
    front = pareto_front([(e[x], e[y]) for e in points])
    if front:
        fig.add_trace(go.Scatter(
            x=[points[i][x] for i in front], y=[points[i][y] for i in front], mode="lines", name="Pareto front",
            line={"color": "rgba(0,0,0,0.25)", "width": 8, "shape": "hv"}, hoverinfo="skip",
        ))
    reference = _unmerged(summary, y)
    if reference is not None:
        fig.add_trace(go.Scatter(x=[1.0], y=[reference], mode="markers", name="unmerged",
                                 marker={"symbol": "star", "size": 14, "color": "black"}))
    fig.update_layout(xaxis_title=X_METRICS.get(x, x), yaxis_title=Y_METRICS.get(y, y), height=480,
                      margin={"l": 50, "r": 20, "t": 30, "b": 50}, legend={"title": "method"})
    return fig


def _unmerged(summary: Sequence[dict[str, Any]], y: str) -> float | None:
    if y == "accuracy":
        values = [e["base_accuracy"] for e in summary if e.get("base_accuracy") is not None]
        return sum(values) / len(values) if values else None
    return 1.0 if any(e.get(y) is not None for e in summary) else None


def _hover(entry: dict[str, Any]) -> str:
    parts = [f"<b>{html.escape(str(entry['setting']))}</b>", f"model {html.escape(str(entry['model']))}"]
    for key, label in (("tokens_out", "tokens at the end"), ("cosine", "cosine"), ("top1_agree", "top-1 agree"),
                       ("accuracy", "accuracy"), ("speedup", "speed-up"), ("flops_speedup", "GFLOPs speed-up"),
                       ("throughput", "inputs/s")):
        if entry.get(key) is not None:
            parts.append(f"{label} {_fmt(entry[key])}")
    return "<br>".join(parts)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_rows(summary: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows of formatted cells) of the summary table."""
    return [label for _, label in TABLE_COLUMNS], [[_fmt(e.get(k)) for k, _ in TABLE_COLUMNS] for e in summary]


def report_html(summary: Sequence[dict[str, Any]], meta: dict[str, Any] | None = None, x: str = "speedup") -> str:
    """One self-contained HTML page: a Pareto plot per available metric, then the table."""
    meta = meta or {}
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>tomviz bench</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}</style></head><body>",
             "<h1>tomviz bench</h1>",
             f"<p>{html.escape(', '.join(f'{k}: {v}' for k, v in meta.items() if k != 'failed_shards'))}</p>"]
    if meta.get("failed_shards"):
        parts.append(f"<p><b>Shards that failed (rerun to retry):</b> {html.escape(str(meta['failed_shards']))}</p>")
    first = True
    for y in available_metrics(summary):
        parts.append(f"<h2>{html.escape(Y_METRICS[y])} against {html.escape(X_METRICS.get(x, x))}</h2>")
        parts.append(pareto_figure(summary, y=y, x=x).to_html(full_html=False, include_plotlyjs=first))
        first = False
    headers, rows = table_rows(summary)
    parts.append("<h2>Settings</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
    parts.append("</table></body></html>")
    return "\n".join(parts)
