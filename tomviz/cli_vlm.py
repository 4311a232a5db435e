"""``python -m tomviz inspect IMAGE --question "..." --model VLM``: the vision-language part of the CLI.

Writes into --out: answers.json (the unreduced and the reduced answer, fidelity, token counts per
stage, timings), one trace per stage (trace_encoder|boundary|llm.json / .npz), what reaches the LLM
(reaches_llm_tileNN.png: the visual groups of the boundary stage drawn on each tile) and, per answer
token, where it looked (attention_stepNN.png, mean over the LLM's layers).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tomviz.merge import registry
from tomviz.merge.checks import PLACES

VISUAL_METHOD_NAMES = registry.names("boundary", "llm")  # read from the registry without importing torch


def add_arguments(inspect: argparse.ArgumentParser) -> None:
    """The VLM options of ``inspect``; ``--method`` also accepts the visual-token methods (fastv, visionzip, downsample)."""
    for action in inspect._actions:
        if action.dest == "method" and action.choices is not None:
            action.choices = sorted(set(action.choices) | set(VISUAL_METHOD_NAMES))
    group = inspect.add_argument_group("vision-language models (with --question)")
    group.add_argument("--question", help="ask a vision-language model (--model: SmolVLM / LLaVA) this question about the image")
    group.add_argument("--place", default="boundary", choices=PLACES, help="where to reduce the visual tokens")
    group.add_argument("--max-new-tokens", type=int, default=24, help="answer length bound (greedy)")
    group.add_argument("--fastv-layer", type=int, default=2, help="K for --method fastv (--place llm)")
    group.add_argument("--vtu", action="store_true",
                       help="DyMU's virtual token unmerging in the LLM (merging methods at the boundary; replaces the log-size bias)")


def cmd_inspect_vlm(args: argparse.Namespace, image: Any) -> int:
    import tomviz
    from tomviz.render.overlay import group_overlay
    from tomviz.render.vlm import answer_attention_overlay, panel_image, tile_panels

    if not args.model:
        raise SystemExit("error: --question needs --model (a SmolVLM or LLaVA id or folder)")
    loaded = tomviz.load(args.model)
    if getattr(loaded, "modality", "") != "image+text":
        raise SystemExit(f"error: {args.model} is not a vision-language model; --question needs SmolVLM or LLaVA")
    options = json.loads(args.method_options) if args.method_options else {}
    method = "fastv" if args.place == "llm" else args.method
    res = tomviz.inspect(loaded, (image, args.question), ratio=args.ratio, method=method, place=args.place, schedule=args.schedule,
                         method_options=options, max_new_tokens=args.max_new_tokens, fastv_layer=args.fastv_layer,
                         vtu=args.vtu)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, trace in res.stages.items():
        trace.save(out / f"trace_{name}.json")
        trace.save(out / f"trace_{name}.npz")
    boundary = res.stages["boundary"]
    picture = res.inputs.image
    groups = boundary.groups(-1)
    for tile, panel in enumerate(tile_panels(boundary)):  # each tile on the part of the photo it shows
        group_overlay(panel_image(picture, panel), groups[panel.tokens], panel.grid, 0).save(out / f"reaches_llm_tile{tile:02d}.png")
    if res.answer_attention is not None:
        for step in range(res.answer_attention.shape[1]):
            answer_attention_overlay(picture, boundary, res.answer_attention, step).save(out / f"attention_step{step:02d}.png")
    summary = {
        "model": loaded.name, "question": args.question, "place": args.place, "method": method, "ratio": args.ratio,
        "vtu": args.vtu, "reference_answer": res.reference_answer, "answer": res.answer,
        "fidelity": vars(res.fidelity), "token_counts": res.token_counts, "timings": res.timings,
        "answer_tokens": res.answer_tokens,
    }
    (out / "answers.json").write_text(json.dumps(summary, indent=1))
    print(f"unreduced: {res.reference_answer!r}\nreduced:   {res.answer!r}\n"
          f"visual tokens to the LLM: {res.token_counts['visual']} → {res.token_counts['llm_input']}"
          f" (after layer K: {res.token_counts['llm_after_k']}); first-token KL {res.fidelity.first_token_kl:.4f}; wrote {out}")
    return 0
