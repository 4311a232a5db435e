"""``python -m tomviz inspect CLIP --method holitom --ratio 0.9 --out DIR``: the video part of the CLI.

A video file (mp4, webm, mov, ...) or a folder of frames as INPUT runs a temporal method on the per-frame
tokens of an image model (default the embedded dinov2-small). Writes into --out: trace.json / trace.npz
(every input token, frame-major (frame, row, col), mapped to its group), stats.json (token counts per
stage and per frame, segments, the method's cost in ms per frame, fidelity), strip.png (the frame strip:
one colour per group across frames, dropped tokens dark, segments marked) and merge.mp4 (the sampled
frames, then the same frames with their groups).

With ``--question "..." --model LLaVA-OneVision|SmolVLM2`` the clip goes to the video VLM instead
(:func:`tomviz.vlm.ask_video`: a temporal method at ``--place boundary``, fastv / holitom / dycoke at
``--place llm``): answers.json and, per stage, trace_STAGE.json and strip_STAGE.png.

A video encoder as --model (VideoMAE: a Hugging Face id such as MCG-NJU/videomae-small-finetuned-kinetics, or
a local folder) merges inside the encoder instead, with an encoder method (--method tome) at --ratio, over the
model's own frame count: trace.json / trace.npz (one record per encoder layer, tokens time-step-major with
tubelets of 2 frames), stats.json (token counts per layer, ms per clip merged and unmerged, GFLOPs, fidelity),
strip_layerNN.png (the strip after each layer: a tubelet's group drawn on both of its frames) and merge.mp4.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tomviz.inputs.video import VIDEO_SUFFIXES
from tomviz.merge import registry

CLIP_METHOD_NAMES = registry.names("clip")  # read from the registry without importing torch


def is_clip(path: Path) -> bool:
    """A video file by its suffix, or a folder (of frames); a literal text too long for a path is not."""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return True
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def add_arguments(inspect: argparse.ArgumentParser) -> None:
    """The clip options of ``inspect``; ``--method`` also accepts the temporal methods."""
    for action in inspect._actions:
        if action.dest == "method" and action.choices is not None:
            action.choices = sorted(set(action.choices) | set(CLIP_METHOD_NAMES))
    group = inspect.add_argument_group("clips (a video file or a folder of frames as INPUT)")
    group.add_argument("--frames", type=int, default=16, help="frames sampled uniformly over the clip")
    group.add_argument("--feature-layer", type=int,
                       help="the encoder block (0-based) whose tokens the method compares across frames (default: the middle one)")


def cmd_inspect_video(args: argparse.Namespace, clip: Path) -> int:
    import tomviz

    if getattr(args, "question", None):
        return cmd_ask_video(args, clip)

    options = json.loads(args.method_options) if args.method_options else {}
    from tomviz.models.hub import ModelLoadError

    try:
        loaded = tomviz.load(args.model or "dinov2-small")
    except ModelLoadError as error:  # e.g. a hub id with no hub access: the message says what to use instead
        raise SystemExit(f"error: {error}")
    if loaded.modality == "video":
        return inspect_with_video_encoder(args, loaded, clip, options)
    try:
        result = tomviz.inspect(loaded, clip, method=args.method, ratio=args.ratio, method_options=options,
                                num_frames=args.frames, feature_layer=args.feature_layer)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    layers = result.trace.num_layers  # TempMe: one record per encoder layer, a strip after each
    strips = {"strip.png": -1, **({f"strip_layer{layer + 1:02d}.png": layer for layer in range(layers)} if layers > 1 else {})}
    out = write_clip_result(args.out, result, strips)
    counts = result.token_counts()
    print(f"wrote {out}: {counts[0]} → {counts[-1]} tokens over {result.video.num_frames} frames, "
          f"{result.trace.meta['method']} {result.method_ms_per_frame:.2f} ms/frame, pooled cosine {result.fidelity:.4f}")
    return 0


def cmd_ask_video(args: argparse.Namespace, clip: Path) -> int:
    """``inspect clip.mp4 --question "..." --model LLaVA-OneVision|SmolVLM2``: answers.json (both answers, token
    counts, timings), and per stage trace_STAGE.json and strip_STAGE.png."""
    import tomviz
    from tomviz.render.video import frame_strip

    if not args.model:
        raise SystemExit("error: --question needs --model (a LLaVA-OneVision or SmolVLM2 id or folder)")
    options = json.loads(args.method_options) if args.method_options else {}
    loaded = tomviz.load(args.model)
    try:
        result = tomviz.inspect(loaded, (clip, args.question), method=args.method, ratio=args.ratio, method_options=options,
                                place=args.place, num_frames=args.frames, max_new_tokens=args.max_new_tokens,
                                layer=args.fastv_layer if args.method == "fastv" else None)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, trace in result.stages.items():
        trace.save(out / f"trace_{name}.json")
        frame_strip(result.video.frames, trace).save(out / f"strip_{name}.png")
    (out / "answers.json").write_text(json.dumps({"question": args.question, **result.summary()}, indent=1))
    counts = result.token_counts
    print(f"unreduced: {result.reference_answer!r}\nreduced:   {result.answer!r}\n"
          f"frame tokens: {counts['clip']} → LLM {counts['llm_input']} (after layer K: {counts['llm_after_k']}); wrote {out}")
    return 0


def inspect_with_video_encoder(args: argparse.Namespace, loaded, clip: Path, options: dict) -> int:
    """``inspect CLIP --model VIDEOMAE``: see the module docstring."""
    from tomviz.video_encoder import inspect_encoder_clip

    try:
        result = inspect_encoder_clip(loaded, clip, method=args.method, ratio=args.ratio, method_options=options)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    out = write_clip_result(args.out, result, {f"strip_layer{layer + 1:02d}.png": layer
                                               for layer in range(result.trace.num_layers)})
    counts, s = result.token_counts(), result.summary()
    print(f"wrote {out}: {counts[0]} → {counts[-1]} tokens over {result.video.num_frames} frames "
          f"({result.trace.num_layers} layers), {s['ms_per_clip']:.0f} ms vs {s['base_ms_per_clip']:.0f} ms unmerged, "
          f"cosine {result.cosine:.4f}")
    return 0


def write_clip_result(folder: str, result, strips: dict[str, int]) -> Path:
    """Write a clip's trace (json, npz), stats.json, the frame strips (file name → trace record) and merge.mp4."""
    from tomviz.render.video import frame_strip, merge_video

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    result.trace.save(out / "trace.json")
    result.trace.save(out / "trace.npz")
    (out / "stats.json").write_text(json.dumps(result.summary(), indent=1))
    for name, stage in strips.items():
        frame_strip(result.video.frames, result.trace, stage=stage).save(out / name)
    merge_video(result.video.frames, result.trace, out / "merge.mp4")
    return out
