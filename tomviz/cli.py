"""Command line: ``python -m tomviz inspect|sweep|bench ...`` (``--help`` on each).

inspect INPUT   one traced forward; writes into --out:
                  overlay_layerNN.png (image inputs: groups filled with their mean
                  colour and outlined, pruned patches dark), trace.json, trace.npz,
                  stats.json (model, method, schedule, tokens removed per layer, token counts, final cosine to
                  the unmerged embedding, groups of the last layer for text)
sweep INPUT...  fidelity and measured speed for every method × ratio; writes
                  sweep.csv, sweep.html (plotly) and sweep.png
bench INPUT     models × methods × ratios × proportional attention over a folder of
                  images or clips, a CSV (file,label) or a .txt of prompts, on Ray (local by
                  default, --address for a cluster) or in process; writes per-shard
                  Parquet (a rerun skips finished shards), results.parquet,
                  summary.json and report.html (Pareto front, table)

INPUT is an image file, a .txt file, a video file or folder of frames (a clip: the
temporal methods, see tomviz/cli_video.py), or a literal text. The model defaults to
dinov2-small for images and clips and minilm for text.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from tomviz.cli_video import add_arguments as add_video_arguments, is_clip
from tomviz.cli_vlm import add_arguments as add_vlm_arguments
from tomviz.merge import registry
from tomviz.merge.checks import SCHEDULES

METHOD_NAMES = tuple(sorted(registry.names("encoder")))  # read from the registry without importing torch
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def read_input(value: str) -> tuple[Any, str, str]:
    """``(input for tomviz, modality, short name)`` from a path or a literal text."""
    path = Path(value)
    if is_clip(path):
        if not path.exists():
            raise SystemExit(f"error: clip {value!r} not found")
        return path, "video", path.stem
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not path.is_file():
            raise SystemExit(f"error: image {value!r} not found")
        return path, "image", path.stem
    if path.suffix.lower() == ".txt" and path.is_file():
        return path.read_text().strip(), "text", path.stem
    return value, "text", "text"


def _model_name(arg: str | None, modality: str) -> str:
    from tomviz.models.hub import DEFAULT_MODEL

    return arg or DEFAULT_MODEL[modality]


def _options(arg: str | None) -> dict[str, Any]:
    if not arg:
        return {}
    try:
        return json.loads(arg)
    except json.JSONDecodeError as err:
        raise SystemExit(f"error: --method-options must be JSON, e.g. '{{\"threshold\": 0.9}}' ({err})")


def cmd_inspect(args: argparse.Namespace) -> int:
    x, modality, _ = read_input(args.input)  # a missing image is reported before anything heavy is imported
    if modality == "video":
        from tomviz.cli_video import cmd_inspect_video

        return cmd_inspect_video(args, x)
    if getattr(args, "question", None):
        from tomviz.cli_vlm import cmd_inspect_vlm

        return cmd_inspect_vlm(args, x)
    from tqdm import tqdm

    import tomviz
    from tomviz.fidelity import cosine, final_embedding, final_sizes_of
    from tomviz.merge.engine import MergeConfig
    from tomviz.merge.request import MergeRequest

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = tomviz.load(_model_name(args.model, modality))
    request = MergeRequest.from_flags(args, _options(args.method_options))
    result = tomviz.inspect(loaded, x, **request.keywords())
    trace = result.trace
    trace.save(out / "trace.json")
    trace.save(out / "trace.npz")
    text = loaded.modality == "text"
    base = loaded.run(result.inputs, MergeConfig.unmerged())[0]
    merged_embedding, _ = final_embedding(result.outputs, loaded.adapter, final_sizes_of(result.state))
    similarity = cosine(merged_embedding, final_embedding(base, loaded.adapter)[0])
    stats: dict[str, Any] = {
        "model": loaded.name,
        "method": args.method,
        "ratio": args.ratio if args.r is None else None,
        "r": args.r,
        "schedule": args.schedule,
        "removed_per_layer": trace.meta["schedule"],
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

        grid, protected = trace.patch_grid, trace.num_protected
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
        if modality == "video":
            raise SystemExit(f"error: sweep takes images and texts; inspect a clip with: python -m tomviz inspect {value}")
        loaded = tomviz.load(_model_name(args.model, modality))
        methods = [m for m in args.methods if not (m == "subword" and loaded.modality != "text")]
        rows += sweep(loaded, x, methods, args.ratios, runs=args.runs, warmup=args.warmup, schedule=args.schedule,
                      method_options=options, input_name=name, progress=True)
    to_csv(rows, out / "sweep.csv")
    sweep_figure(rows).write_html(out / "sweep.html", include_plotlyjs=True)
    sweep_figure_png(rows, out / "sweep.png")
    failed = [r for r in rows if r.error]
    print(f"wrote {out}: {len(rows)} rows ({len(failed)} not reachable)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from collections import Counter

    from tomviz.bench import BenchSpec, list_items, make_settings, read_summary, read_toml, run_bench
    from tomviz.bench.spec import DEFAULT_CLIP_METHODS, DEFAULT_FRAMES, DEFAULT_METHODS, DEFAULT_RATIOS
    from tomviz.merge import METHODS
    from tomviz.render.bench import report_html

    config = read_toml(args.config) if args.config else {}
    pick = lambda name, default: getattr(args, name) if getattr(args, name) is not None else config.get(name, default)  # noqa: E731
    try:
        items = list_items(args.input)
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    text = all(item.text is not None for item in items)
    models = pick("model", None) or config.get("models") or [_model_name(None, "text" if text else "image")]
    clips = any(item.is_clip for item in items)
    methods = pick("methods", list(DEFAULT_CLIP_METHODS if clips else DEFAULT_METHODS))
    for name in [m for m in methods if m not in METHODS and m not in registry.names("clip")]:
        print(f"warning: unknown method {name!r}: its settings will be reported as errors", file=sys.stderr)
    ratios = pick("ratios", None if (args.r or config.get("r")) else list(DEFAULT_RATIOS)) or []
    prop = {"on": [True], "off": [False], "both": [True, False]}[args.prop_attn] if args.prop_attn else config.get("prop_attn", [True])
    options = _options(args.method_options) if args.method_options else config.get("method_options", {})
    settings = make_settings(methods, ratios, pick("r", []) or [], schedule=pick("schedule", "constant"), prop_attn=prop)
    spec = BenchSpec(models=list(models), settings=settings, method_options=options,
                     batch_size=int(pick("batch_size", 8)), shard_size=int(pick("shard_size", 32)),
                     frames=int(pick("frames", DEFAULT_FRAMES)))
    out = Path(args.out)
    run = run_bench(spec, items, out, engine=args.engine, workers=args.workers, address=args.address,
                    cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker, threads=args.threads,
                    progress=not args.no_progress, ship_code=args.ship_code, command=getattr(args, "command_line", None))
    summary, meta = read_summary((out / "summary.json").read_text())
    (out / "report.html").write_text(report_html(summary, meta))
    rows = run.rows()
    errors = Counter(r["error"] for r in rows if r.get("error"))
    print(f"wrote {out}: {len(items)} inputs × {len(settings)} settings × {len(models)} model(s) = {len(rows)} rows; "
          f"shards: {len(run.ran)} computed, {len(run.skipped)} already done, {len(run.failed)} failed; {run.seconds:.1f} s")
    for message, count in errors.most_common(8):
        print(f"  {count} row(s): {message}")
    for shard, why in run.failed.items():
        print(f"  shard {shard} failed (rerun to retry): {why}", file=sys.stderr)
    return 1 if run.failed else 0


BENCH_DESCRIPTION = (
    "Sweep models x methods x ratios (or r) x proportional attention over a folder of images or clips (flat or one "
    "sub-folder per class), a CSV file,label or a .txt of prompts. Clips run the temporal methods (default holitom "
    "fastvid dycoke framefusion rlt frame_drop tome random) on an image model's per-frame tokens, or a video encoder's "
    "(VideoMAE) own merging; they are bounded as the app's uploads are. Writes OUT/shards/*.parquet, results.parquet, "
    "summary.json and report.html. A rerun with the same settings computes only the shards that are missing.")


def build_parser() -> argparse.ArgumentParser:
    methods = list(METHOD_NAMES)
    parser = argparse.ArgumentParser(prog="python -m tomviz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="dinov2-small, minilm, a Hugging Face id or a local folder (default: by input)")
    common.add_argument("--schedule", "--mode", dest="schedule", default="constant", choices=SCHEDULES,
                        help="how a ratio spreads over layers (--mode: its old name)")
    common.add_argument("--method-options", help="JSON options for the method(s), e.g. '{\"threshold\": 0.9}'")
    common.add_argument("--out", required=True, help="output folder (created)")

    inspect = commands.add_parser("inspect", parents=[common], help="trace one input: overlays, trace, stats",
                                  description="Trace one input; writes overlay_layerNN.png (images), trace.json, trace.npz, stats.json.")
    inspect.add_argument("input", help="image file, .txt file, video file / folder of frames, or literal text")
    inspect.add_argument("--method", default="tome", choices=methods)
    inspect.add_argument("--ratio", type=float, default=0.5, help="fraction of the input tokens removed by the last layer")
    inspect.add_argument("--r", type=int, help="instead of --ratio: tokens removed per layer")
    add_vlm_arguments(inspect)
    add_video_arguments(inspect)
    inspect.set_defaults(run=cmd_inspect)

    sweep = commands.add_parser("sweep", parents=[common], help="fidelity and speed for methods x ratios",
                                description="Fidelity and measured speed per method x ratio; writes sweep.csv, sweep.html, sweep.png.")
    sweep.add_argument("inputs", nargs="+", help="image files, .txt files or literal texts")
    sweep.add_argument("--methods", nargs="+", default=["tome", "pitome", "diffrate", "evit"], choices=methods)
    sweep.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    sweep.add_argument("--runs", type=int, default=3, help="timed runs per point (median)")
    sweep.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    sweep.set_defaults(run=cmd_sweep)

    bench = commands.add_parser("bench", help="methods x ratios x models over many inputs, on Ray",
                                description=BENCH_DESCRIPTION)
    bench.add_argument("input", help="folder of images or clips, .csv (file,label) or .txt (one prompt per line)")
    bench.add_argument("--out", required=True, help="output folder (created; reused by reruns)")
    bench.add_argument("--config", help="TOML file with any of: models, methods, ratios, r, schedule, prop_attn, batch_size, "
                       "shard_size, [method_options.NAME]; flags given on the command line win")
    bench.add_argument("--model", action="append", help="model (repeatable; default dinov2-small, minilm for prompts)")
    bench.add_argument("--methods", nargs="+", help=f"merge methods (default tome pitome evit random; known: {', '.join(methods)})")
    bench.add_argument("--ratios", nargs="+", type=float, help="fractions of the input tokens removed by the last layer")
    bench.add_argument("--r", nargs="+", type=int, help="tokens removed per layer (settings beside the ratios)")
    bench.add_argument("--schedule", "--mode", dest="schedule", choices=SCHEDULES,
                       help="how a ratio or r spreads over layers (--mode: its old name)")
    bench.add_argument("--prop-attn", choices=["on", "off", "both"], help="proportional attention (default on)")
    bench.add_argument("--method-options", help="JSON options per method, e.g. '{\"dtome\": {\"threshold\": 0.9}}'")
    bench.add_argument("--batch-size", type=int, help="images per forward; throughput is measured at this size (default 8)")
    bench.add_argument("--shard-size", type=int, help="inputs per shard / result file (default 32)")
    bench.add_argument("--frames", type=int, help="clips: frames sampled per clip for a per-frame model (default 16)")
    bench.add_argument("--engine", choices=["ray", "local"], default="ray", help="Ray actors (default) or this process")
    bench.add_argument("--workers", type=int, default=1, help="Ray actors per model (one model each)")
    bench.add_argument("--address", help="join a Ray cluster: auto or ray://host:10001 (default: start Ray locally)")
    bench.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs Ray reserves per actor")
    bench.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs Ray reserves per actor (CUDA is used when > 0 or present)")
    bench.add_argument("--threads", type=int, help="torch threads per worker (default: CPUs per worker)")
    bench.add_argument("--ship-code", action="store_true", help="send this tomviz checkout to the cluster's workers")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = "python -m tomviz " + shlex.join(sys.argv[1:] if argv is None else argv)
    return args.run(args)
