"""The Benchmark tab: open a results file that ``python -m tomviz bench`` wrote and draw its Pareto plot
and table (the same figure as the HTML report, from :mod:`tomviz.render.bench`). No model runs here.

The app is public, so the tab opens only files the visitor uploaded: a path outside Gradio's upload
folder is refused (an API caller could send any string), the size is bounded, and only Parquet
(``results.parquet``) and JSON (``summary.json``) are read; nothing is unpickled.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr

from tomviz.bench.upload import UploadBudget, read_uploaded_results
from tomviz.render.bench import TABLE_COLUMNS, X_METRICS, Y_METRICS, available_metrics, pareto_figure, table_rows
from tomviz.ui.common import session_state, user_errors
from tomviz.ui.examples import EXAMPLE_RESULTS

MAX_RESULTS_BYTES = 32 * 1024 * 1024  # uploads larger than this are refused
MAX_ROWS = 300_000  # rows of a results.parquet (summary.json holds one entry per setting: use it for larger runs)
MAX_LINES = 40  # lines of the Pareto plot (one per model × method × schedule × proportional attention)
SUFFIXES = (".parquet", ".json")


def _uploaded(path: str | None) -> Path:
    """The uploaded file's path, checked: inside Gradio's upload folder, a results suffix, bounded size."""
    if not path:
        raise ValueError("no file: upload the results.parquet or summary.json that `python -m tomviz bench` wrote")
    from gradio.utils import get_upload_folder

    real = Path(os.path.realpath(path))
    root = Path(os.path.realpath(get_upload_folder()))
    if not real.is_relative_to(root) or not real.is_file():
        raise ValueError("only files uploaded here can be opened")
    if real.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{real.suffix or 'this file'} is not a results file: upload results.parquet or summary.json")
    size = real.stat().st_size
    if size > MAX_RESULTS_BYTES:
        raise ValueError(f"the file has {size / 2**20:.1f} MiB; at most {MAX_RESULTS_BYTES // 2**20} MiB "
                         "(summary.json is small however large the benchmark was)")
    return real


def load_results(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(summary, meta)`` from a results.parquet or a summary.json (a checked path), within ``UploadBudget``."""
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError("reading Parquet needs pyarrow on this server: upload summary.json instead") from None
    try:
        summary, meta = read_uploaded_results(path, UploadBudget(max_rows=MAX_ROWS))
    except ValueError:
        raise  # a bound or a malformed file: the message says which
    except Exception as err:  # noqa: BLE001 - a damaged file: say so, keep serving
        raise ValueError(f"cannot read this file ({type(err).__name__})") from err
    lines = len({(e["model"], e["method"], e.get("schedule"), e.get("prop_attn")) for e in summary})
    if lines > MAX_LINES:
        raise ValueError(f"the plot would have {lines} lines (model × method × schedule); at most {MAX_LINES}")
    return summary, meta


def view(summary: list[dict[str, Any]] | None, y: str = "cosine", x: str = "speedup"):
    """(figure, table rows) of a summary."""
    if not summary:
        return None, []
    metrics = available_metrics(summary)
    y = y if y in metrics else (metrics[0] if metrics else "cosine")
    return pareto_figure(summary, y=y if y in Y_METRICS else "cosine", x=x if x in X_METRICS else "speedup"), table_rows(summary)[1]


def open_results(file: str | None, y: str = "cosine", x: str = "speedup"):
    """Read an uploaded results file: (summary state, y choices, figure, table, description). API: ``/open_bench``."""
    with user_errors("open this results file"):
        return results_view(*load_results(_uploaded(file)), y, x)


def open_example_results():
    """Page load: the example results shipped in ``assets/bench_example`` (read as an upload is, by
    :func:`load_results`), with the command that made them; the same outputs as :func:`open_results`."""
    with user_errors("open the example results"):
        summary, meta = load_results(EXAMPLE_RESULTS)
        out = results_view(summary, meta, "cosine", "speedup")
        made_by = f"\n\nExample shipped with tomviz, made by `{meta['command']}`." if meta.get("command") else ""
        return (*out[:-1], out[-1] + made_by + " Upload your own `summary.json` or `results.parquet` to replace it.")


def results_view(summary: list[dict[str, Any]], meta: dict[str, Any], y: str, x: str):
    """(summary state, y choices, figure, table, description) of a results file's contents."""
    if not summary:
        raise ValueError("the file holds no benchmark results")
    metrics = available_metrics(summary)
    if not metrics:
        raise ValueError("no setting in the file has a quality figure (cosine, top-1, accuracy) to plot")
    y = y if y in metrics else metrics[0]
    figure, rows = view(summary, y, x)
    models = sorted({str(e["model"]) for e in summary})
    errors = sum(int(e.get("errors") or 0) for e in summary)
    text = (f"**{len(summary)} settings** on {', '.join(models)}; {errors} row(s) with an error. "
            + (f"Benchmark: {meta.get('inputs')} inputs, batch size {meta.get('batch_size')}." if meta else ""))
    return summary, gr.Dropdown(choices=[(Y_METRICS[m], m) for m in metrics], value=y), figure, rows, text


def redraw(summary: list[dict[str, Any]] | None, y: str, x: str):
    """Redraw the plot for another metric (no file read). API: ``/redraw_bench``."""
    with user_errors("draw this plot"):
        return view(summary, y, x)[0]


def build_bench_tab() -> None:
    """Lay out the Benchmark tab inside the current ``gr.Tab`` and wire its events."""
    summary = session_state()
    gr.Markdown("Open the results of `python -m tomviz bench` (its `summary.json`, or `results.parquet` up to "
                f"{MAX_ROWS:,} rows) to see fidelity or accuracy against speed-up, one line per method, with the "
                "random baseline dashed and the Pareto front shaded.")
    with gr.Row():
        with gr.Column(scale=3):
            file = gr.File(label="Results file", file_types=list(SUFFIXES), type="filepath")
            y = gr.Dropdown([(label, key) for key, label in Y_METRICS.items()], value="cosine", label="Quality")
            x = gr.Dropdown([(label, key) for key, label in X_METRICS.items()], value="speedup", label="Speed")
            info = gr.Markdown()
        with gr.Column(scale=7):
            plot = gr.Plot(label="Pareto front", elem_id="bench-plot")
    table = gr.Dataframe(headers=[label for _, label in TABLE_COLUMNS], label="Settings", interactive=False)

    gr.on(None, open_example_results, None, [summary, y, plot, table, info], api_name="open_bench_example",
          api_visibility="private", queue=False, show_progress="hidden")  # page load: the example results
    file.upload(open_results, inputs=[file, y, x], outputs=[summary, y, plot, table, info], api_name="open_bench")
    gr.on([y.input, x.input], redraw, inputs=[summary, y, x], outputs=plot, api_name="redraw_bench", show_progress="hidden")
