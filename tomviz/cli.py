"""Command line: ``python -m tomviz inspect|sweep ...`` (``--help`` on each).

inspect INPUT   one traced forward; writes into --out:
                  overlay_layerNN.png (image inputs: groups filled with their mean
                  colour and outlined, pruned patches dark), trace.json, trace.npz,
                  stats.json (model, method, schedule, token counts, final cosine to
                  the unmerged embedding, groups of the last layer for text)
sweep INPUT...  fidelity and measured speed for every method × ratio; writes
                  sweep.csv, sweep.html (plotly) and sweep.png

INPUT is an image file, a .txt file, or a literal text. The model defaults to
dinov2-small for images and minilm for text.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def read_input(value: str) -> tuple[Any, str, str]:
    """``(input for tomviz, modality, short name)`` from a path or a literal text."""
    path = Path(value)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not path.is_file():
            raise SystemExit(f"error: image {value!r} not found")
        return path, "image", path.stem
    if path.suffix.lower() == ".txt" and path.is_file():
        return path.read_text().strip(), "text", path.stem
    return value, "text", "text"


def _model_name(arg: str | None, modality: str) -> str:
    return arg or ("dinov2-small" if modality == "image" else "minilm")


def _options(arg: str | None) -> dict[str, Any]:
    if not arg:
        return {}
    try:
        return json.loads(arg)
    except json.JSONDecodeError as err:
        raise SystemExit(f"error: --method-options must be JSON, e.g. '{{\"threshold\": 0.9}}' ({err})")


def cmd_inspect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import tomviz
    from tomviz.api import run
    from tomviz.merge import get_method
    from tomviz.merge.engine import MergeConfig
    from tomviz.fidelity import cosine, final_embedding, final_sizes_of

    x, modality, _ = read_input(args.input)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = tomviz.load(_model_name(args.model, modality))
    result = tomviz.inspect(loaded, x, ratio=None if args.r is not None else args.ratio, r=args.r, method=args.method,
                            mode=args.mode, method_options=_options(args.method_options))
    trace = result.trace
    trace.save(out / "trace.json")
    trace.save(out / "trace.npz")
    text = loaded.modality == "text"
    base = run(loaded, result.inputs, MergeConfig(method=get_method("tome"), r=0))[0]
    merged_embedding, _ = final_embedding(result.outputs, loaded.modality, final_sizes_of(result.state))
    similarity = cosine(merged_embedding, final_embedding(base, loaded.modality)[0])
    stats: dict[str, Any] = {
        "model": loaded.name,
        "method": args.method,
        "ratio": args.ratio if args.r is None else None,
        "r": args.r,
        "schedule": trace.meta["schedule"],
        "token_counts": trace.token_counts(),
        "final_cosine_to_unmerged": similarity,
        "pruned_inputs_last_layer": int((trace.groups(-1) < 0).sum()),
    }
    if text:
        tokens = trace.meta.get("tokens") or []
        groups = trace.groups(-1).tolist()
        stats["groups_last_layer"] = [[tokens[i] for i, g in enumerate(groups) if g == group] for group in sorted(set(groups) - {-1})]
    elif result.inputs.image is not None:
        from tomviz.render.overlay import group_overlay

        grid, protected = trace.meta["patch_grid"], trace.meta["num_protected"]
        for layer in tqdm(range(trace.num_layers), desc="overlays", unit="layer"):
            group_overlay(result.inputs.image, trace.groups(layer), grid, protected).save(out / f"overlay_layer{layer:02d}.png")
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    print(f"wrote {out}: token counts {trace.token_counts()}, final cosine {stats['final_cosine_to_unmerged']:.4f}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import tomviz
    from tomviz.render.sweep import sweep_figure, sweep_figure_png
    from tomviz.sweep import sweep, to_csv

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = _options(args.method_options)
    rows = []
    for value in args.inputs:
        x, modality, name = read_input(value)
        loaded = tomviz.load(_model_name(args.model, modality))
        methods = [m for m in args.methods if not (m == "subword" and loaded.modality != "text")]
        rows += sweep(loaded, x, methods, args.ratios, runs=args.runs, warmup=args.warmup, mode=args.mode,
                      method_options=options, input_name=name, progress=True)
    to_csv(rows, out / "sweep.csv")
    sweep_figure(rows).write_html(out / "sweep.html", include_plotlyjs=True)
    sweep_figure_png(rows, out / "sweep.png")
    failed = [r for r in rows if r.get("error")]
    print(f"wrote {out}: {len(rows)} rows ({len(failed)} not reachable)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tomviz.merge import METHODS

    methods = sorted(METHODS)
    parser = argparse.ArgumentParser(prog="python -m tomviz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="dinov2-small, minilm, a Hugging Face id or a local folder (default: by input)")
    common.add_argument("--mode", default="constant", choices=["constant", "decreasing"], help="how a ratio spreads over layers")
    common.add_argument("--method-options", help="JSON options for the method(s), e.g. '{\"threshold\": 0.9}'")
    common.add_argument("--out", required=True, help="output folder (created)")

    inspect = commands.add_parser("inspect", parents=[common], help="trace one input: overlays, trace, stats",
                                  description="Trace one input; writes overlay_layerNN.png (images), trace.json, trace.npz, stats.json.")
    inspect.add_argument("input", help="image file, .txt file or literal text")
    inspect.add_argument("--method", default="tome", choices=methods)
    inspect.add_argument("--ratio", type=float, default=0.5, help="fraction of the input tokens removed by the last layer")
    inspect.add_argument("--r", type=int, help="instead of --ratio: tokens removed per layer")
    inspect.set_defaults(run=cmd_inspect)

    sweep = commands.add_parser("sweep", parents=[common], help="fidelity and speed for methods x ratios",
                                description="Fidelity and measured speed per method x ratio; writes sweep.csv, sweep.html, sweep.png.")
    sweep.add_argument("inputs", nargs="+", help="image files, .txt files or literal texts")
    sweep.add_argument("--methods", nargs="+", default=["tome", "pitome", "diffrate", "evit"], choices=methods)
    sweep.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    sweep.add_argument("--runs", type=int, default=3, help="timed runs per point (median)")
    sweep.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    sweep.set_defaults(run=cmd_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
