"""``python -m tomviz inspect CLIP --method holitom --ratio 0.9 --out DIR``: the video part of the CLI.

A video file (mp4, webm, mov, ...) or a folder of frames as INPUT runs a temporal method on the per-frame
tokens of an image model (default the embedded dinov2-small). Writes into --out: trace.json / trace.npz
(every input token, frame-major (frame, row, col), mapped to its group), stats.json (token counts per
stage and per frame, segments, the method's cost in ms per frame, fidelity), strip.png (the frame strip:
one colour per group across frames, dropped tokens dark, segments marked) and merge.mp4 (the sampled
frames, then the same frames with their groups).
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
    from tomviz.render.video import frame_strip, merge_video

    options = json.loads(args.method_options) if args.method_options else {}
    loaded = tomviz.load(args.model or "dinov2-small")
    try:
        result = tomviz.inspect(loaded, clip, method=args.method, ratio=args.ratio, method_options=options,
                                num_frames=args.frames, feature_layer=args.feature_layer)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.trace.save(out / "trace.json")
    result.trace.save(out / "trace.npz")
    (out / "stats.json").write_text(json.dumps(result.summary(), indent=1))
    frame_strip(result.video.frames, result.trace).save(out / "strip.png")
    merge_video(result.video.frames, result.trace, out / "merge.mp4")
    counts = result.token_counts()
    print(f"wrote {out}: {counts[0]} → {counts[-1]} tokens over {result.video.num_frames} frames, "
          f"{result.trace.meta['method']} {result.method_ms_per_frame:.2f} ms/frame, pooled cosine {result.fidelity:.4f}")
    return 0
