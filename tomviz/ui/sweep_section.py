"""The sweep under the Compare tab: fidelity and measured speed of methods × ratios on the compared input.

The handler (:func:`run_sweep`) is a module-level function, testable without a browser; the
work is :func:`tomviz.sweep.sweep`, the figure :func:`tomviz.render.sweep.sweep_figure`.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import gradio as gr

import tomviz
from tomviz.analysis import check_modality
from tomviz.merge import METHODS, check_methods
from tomviz.merge.schedule import MAX_RATIO, check_ratio, check_schedule_name
from tomviz.ratio_grid import foreground
from tomviz.render.sweep import sweep_figure
from tomviz.sweep import SweepRow, sweep, to_csv
from tomviz.ui.common import (DEFAULT_MODEL, EXAMPLE_IMAGES, PromptBox, download_folder, input_of, methods_for,
                              user_errors)
from tomviz.ui.examples import computed_once
from tomviz.ui.server import HEAVY

SWEEP_METHODS = ["tome", "pitome", "evit", "random"]
SWEEP_RATIOS = "0, 0.25, 0.5, 0.75, 0.9"
SWEEP_RUNS, SWEEP_WARMUP = 3, 1  # timed / untimed forwards per setting (default sweep: ~15 s for dinov2-small on 1 CPU thread)
MAX_SWEEP_SETTINGS = 60  # methods × ratios refused beyond this (a sweep holds the model queue)
SWEEP_HEADERS = ["method", "ratio", "tokens out", "cosine", "top-1 kept", "latency ms", "speed-up", "error"]


class SweepOutputs(NamedTuple):
    """What ``run_sweep`` returns, one field per output component (wired in this order)."""

    figure: Any  # plotly: fidelity and speed-up against the ratio, one line per method
    table: list[list[Any]]  # rows under ``SWEEP_HEADERS``
    csv: str  # path of the CSV download


def parse_ratios(text: str | None) -> list[float]:
    """``"0, 0.25, 0.5"`` → ``[0.0, 0.25, 0.5]`` (sorted, duplicates dropped); ValueError with a readable message."""
    parts = [p for p in str(text or "").replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise ValueError(f"no ratios: type numbers between 0 and {MAX_RATIO} separated by commas, e.g. {SWEEP_RATIOS}")
    ratios = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number: type ratios separated by commas, e.g. {SWEEP_RATIOS}") from None
        check_ratio(value)
        ratios.append(value)
    return sorted(set(ratios))


def sweep_rows_table(rows: list[SweepRow]) -> list[list[Any]]:
    """Rows for the table (``SWEEP_HEADERS``); missing numbers are blank."""
    def num(value: Any, scale: float = 1.0, digits: int = 4) -> Any:
        return "" if value is None else round(float(value) * scale, digits)

    out = []
    for r in rows:
        top1 = "" if r.top1_agree is None else ("yes" if r.top1_agree else "no")
        out.append([r.method, r.ratio, "" if r.tokens_out is None else int(r.tokens_out), num(r.cosine),
                    top1, num(r.latency_s, 1e3, 1), num(r.speedup, 1.0, 2), r.error or ""])
    return out


def methods_that_run_on(modality: str, methods: list[str]) -> list[str]:
    """The ``methods`` that run on ``modality`` inputs (a warning names the others); ValueError when none."""
    skipped = [m for m in methods if modality not in METHODS[m].modalities]
    if skipped:
        gr.Warning(f"Skipped {', '.join(skipped)}: not for {modality} inputs.")
    kept = [m for m in methods if m not in skipped]
    if not kept:
        raise ValueError(f"no method left that runs on {modality} inputs")
    return kept


def run_sweep(modality: str, image: str | None, prompt: str | None, model: str, methods: list[str] | None,
              ratios: str = SWEEP_RATIOS, schedule: str = "constant", prop_attn: bool = True,
              progress: gr.Progress = gr.Progress(track_tqdm=True)) -> SweepOutputs:
    """Fidelity and measured speed of every chosen method × ratio on the input. API: ``/sweep``."""
    with user_errors("run the sweep"):
        x = input_of(modality, image, prompt)
        values = parse_ratios(ratios)
        methods = [m for m in (methods or []) if m]
        if not methods:
            raise ValueError("no method chosen: tick at least one")
        check_methods(methods)
        if len(methods) * len(values) > MAX_SWEEP_SETTINGS:
            raise ValueError(f"{len(methods)} methods × {len(values)} ratios = {len(methods) * len(values)} settings; "
                             f"at most {MAX_SWEEP_SETTINGS} per sweep")
        check_schedule_name(schedule)
        name = (model or DEFAULT_MODEL[modality]).strip()
        progress(0.0, desc=f"Loading {name}")
        loaded = tomviz.load(name, untrusted=True)
        check_modality(name, loaded, modality, f"choose the {loaded.modality} input")
        methods = methods_that_run_on(modality, methods)
        rows = sweep(loaded, x, methods, values, runs=SWEEP_RUNS, warmup=SWEEP_WARMUP, schedule=schedule,
                     prop_attn=bool(prop_attn), progress=True)
        return sweep_outputs(rows)


def sweep_outputs(rows: list[SweepRow]) -> SweepOutputs:
    """The figure, the table and a CSV download of ``rows`` (a warning counts the settings that failed)."""
    failed = [r for r in rows if r.error]
    if failed:
        gr.Warning(f"{len(failed)} of {len(rows)} settings could not run (see the error column).")
    path = to_csv(rows, download_folder() / "sweep.csv")
    return SweepOutputs(figure=sweep_figure(rows), table=sweep_rows_table(rows), csv=str(path))


@computed_once
def example_sweep_rows() -> list[SweepRow]:
    """The sweep the tab opens on: the default methods and ratios on the first example photo, one timed
    forward per setting and none untimed (a quarter of a visitor's sweep: the first page load waits for it);
    once per process."""
    loaded = tomviz.load(DEFAULT_MODEL["image"], untrusted=True)
    return sweep(loaded, EXAMPLE_IMAGES[0], SWEEP_METHODS, parse_ratios(SWEEP_RATIOS), runs=1, warmup=0)


def open_example_sweep() -> SweepOutputs:
    """Page load: :func:`example_sweep_rows` drawn, with a CSV written for this visitor (all left as is
    without example photos)."""
    if not EXAMPLE_IMAGES:
        return SweepOutputs(gr.skip(), gr.skip(), gr.skip())
    with user_errors("show the example sweep"):
        return sweep_outputs(example_sweep_rows())


def build_sweep_section(inputs: dict[str, Any]) -> gr.CheckboxGroup:
    """Lay out the sweep under the comparison and wire its button. ``inputs``: the compare section's
    ``modality``, ``image``, ``prompt``, ``model``, ``schedule`` and ``prop_attn`` components, which the sweep
    shares. Returns the methods box (its choices follow the modality)."""
    gr.Markdown("## Sweep\nFidelity (cosine to the unmerged run; top-1 agreement for classifiers) and measured "
                "speed-up against the merge ratio, for every chosen method on the input above.")
    with gr.Row():
        with gr.Column(scale=4):
            methods = gr.CheckboxGroup(methods_for("image"), value=SWEEP_METHODS, label="Methods")
            ratios = PromptBox(SWEEP_RATIOS, label="Ratios", info=f"Comma-separated, each between 0 and {MAX_RATIO}")
            button = gr.Button("Run sweep", variant="primary")
            csv = gr.File(label="CSV", interactive=False)
        with gr.Column(scale=7):
            figure = gr.Plot(label="Fidelity and speed-up against ratio", elem_id="sweep-figure")
            table = gr.Dataframe(headers=SWEEP_HEADERS, label="Sweep", interactive=False)
    components = dict(figure=figure, table=table, csv=csv)
    button.click(
        foreground(run_sweep), inputs=[inputs["modality"], inputs["image"], inputs["prompt"], inputs["model"], methods, ratios,
                           inputs["schedule"], inputs["prop_attn"]],
        outputs=[components[name] for name in SweepOutputs._fields], api_name="sweep", **HEAVY,
    )
    gr.on(None, open_example_sweep, None, [components[name] for name in SweepOutputs._fields],
          api_name="open_sweep_example", api_visibility="private", queue=False)  # page load: the example's sweep
    return methods
