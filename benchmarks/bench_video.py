"""Temporal methods against their zero-cost ceiling: DINOv2-S on 16 frames, the method, then the stage that
consumes the tokens (a random-weight LLM prefill of SmolVLM2-256M's text shape).

For each method the clip's ``T * N`` tokens go in and ``M`` come out. Three pipelines, timed side by side
(:func:`timing.side_by_side`: every configuration once per round, in turn):

* unreduced: the consumer's prefill on all ``T * N`` tokens;
* the method: the method on the encoder's outputs, then the prefill on its ``M`` tokens;
* the ceiling: a slice to the same ``M`` tokens (no cost), then the same prefill.

The encoder (DINOv2-S, per frame) is the same in all three and is timed once, reported beside. The figure of
merit is the method's saving over the ceiling's: ``(unreduced - method) / (unreduced - ceiling)``.

TempMe (``--methods tempme``) merges inside the encoder, so its row times the encoder too: the 16 frames as one
batch through DINOv2-S, then the prefill on what comes out (every sequence's tokens, CLS included):

* unreduced: the stock encoder, then the prefill on all ``T * (N + 1)`` tokens;
* TempMe: the encoder patched by tomviz (joins, matching, size-weighted merges, proportional attention);
* the ceiling: the same per-layer counts with the joins done by a reshape and the tokens dropped by a slice
  (:func:`slicing_joins`: no matching, no merge arithmetic, no attention bias), then the same prefill.
The consumer: ``LlamaModel`` with SmolVLM2-256M's text config (SmolLM2-135M: hidden 576, MLP 1536, 9 heads,
3 KV heads, 30 layers; ``--llm-layers`` fewer on a slow CPU), random weights, SDPA, fed ``inputs_embeds``.

    python benchmarks/bench_video.py --clip world.mp4 --frames 16 --ratio 0.9 --llm-layers 30 --rounds 5

A video VLM instead (``benchmarks/bench_video_vlm.py``: LLaVA-OneVision's layout, the boundary and inside-the-LLM
stages against their ceilings): ``--llava-ov-7b`` (alias ``--gpu``; LLaVA-OneVision-7B's shape, 32 frames, bf16 on
CUDA) or ``--vlm-smoke`` (a tiny shape on the CPU).

    python benchmarks/bench_video.py --llava-ov-7b --frames 32 --rounds 3
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import side_by_side  # noqa: E402

import tomviz  # noqa: E402
from tomviz.inputs.video import example_clips, read_video  # noqa: E402
from tomviz.merge.temporal.methods import ClipInputs, get_clip_method  # noqa: E402
from tomviz.merge.engine import MergeConfig, MergeState  # noqa: E402
from tomviz.merge.temporal.tempme import TempMeMerge  # noqa: E402
from tomviz.models import patching  # noqa: E402
from tomviz.models.frames import encode_frames  # noqa: E402

METHODS = ("holitom", "fastvid", "dycoke", "framefusion", "rlt", "frame_drop", "tome", "random", "tempme")


def consumer(layers: int) -> tf.LlamaModel:
    """SmolVLM2-256M's text model shape (SmolLM2-135M), random weights."""
    config = tf.LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                            num_hidden_layers=layers, vocab_size=512, max_position_embeddings=8192)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return tf.LlamaModel(config).eval()


@contextlib.contextmanager
def slicing_joins():
    """TempMe's zero-cost ceiling: each join a reshape, each merge a slice to the same count."""
    before, after = MergeState.before_attention, MergeState.after_attention

    def join_and_drop(self: MergeState, layer: int, x: torch.Tensor) -> torch.Tensor:
        step = self.steps[layer]
        x = x.reshape(x.shape[0] // step.group, -1, x.shape[-1])  # [B / g, g * N, C]
        return x[:, : x.shape[1] - step.before]

    def drop(self: MergeState, layer: int, x: torch.Tensor, *projections_and_heads) -> torch.Tensor:
        return x[:, : x.shape[1] - self.schedule[layer]]

    MergeState.before_attention, MergeState.after_attention = join_and_drop, drop
    try:
        yield
    finally:
        MergeState.before_attention, MergeState.after_attention = before, after


def tempme_row(loaded, pixels: torch.Tensor, ratio: float, prefill, args) -> str:
    """TempMe's row (module docstring): encoder and prefill, unreduced, TempMe and the ceiling."""
    model = loaded.model
    config = MergeConfig(method=TempMeMerge(ratio=ratio))

    def encode(slicing: bool = False) -> torch.Tensor:
        with torch.inference_mode(), patching.new_state(model, config), (slicing_joins() if slicing else contextlib.nullcontext()):
            return model(pixel_values=pixels).last_hidden_state  # [B', M', C]

    def plain() -> torch.Tensor:
        with torch.inference_mode():
            return model(pixel_values=pixels).last_hidden_state

    def flat(hidden: torch.Tensor) -> torch.Tensor:
        return hidden.reshape(-1, hidden.shape[-1])  # [B' * M', C]

    total, kept = flat(plain()).shape[0], flat(encode()).shape[0]
    assert flat(encode(slicing=True)).shape[0] == kept
    runs = {"unreduced": lambda: prefill(flat(plain())), "method": lambda: prefill(flat(encode())),
            "ceiling": lambda: prefill(flat(encode(slicing=True))), "method_only": encode, "ceiling_only": lambda: encode(True),
            "encoder_only": plain}
    times, _ = side_by_side(runs, args.rounds, args.warmup, time.perf_counter)
    ms = {key: 1000 * statistics.median(values) for key, values in times.items()}
    merit = (ms["unreduced"] - ms["method"]) / max(ms["unreduced"] - ms["ceiling"], 1e-9)
    encoder_merit = (ms["encoder_only"] - ms["method_only"]) / max(ms["encoder_only"] - ms["ceiling_only"], 1e-9)
    frames = pixels.shape[0]
    return (f"| tempme (in the encoder) | {kept} ({kept / total:.1%}) | {ms['method_only']:.0f} (encoder; stock "
            f"{ms['encoder_only']:.0f}, ceiling {ms['ceiling_only']:.0f}: {encoder_merit:.3f} of its saving) | "
            f"{ms['method_only'] / frames:.1f} | {ms['unreduced']:.0f} | {ms['method']:.0f} | {ms['ceiling']:.0f} | {merit:.3f} |")


def main() -> None:
    if {"--llava-ov-7b", "--gpu", "--vlm-smoke"} & set(sys.argv[1:]):
        import bench_video_vlm

        return bench_video_vlm.main(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="world.mp4", help="a path, or the name of an example clip")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--llm-layers", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = example_clips().get(args.clip, args.clip)
    video = read_video(source, args.frames)
    loaded = tomviz.load("dinov2-small", device="cpu")
    start = time.perf_counter()
    features = encode_frames(loaded, video.frames)
    encoder_ms = 1000 * (time.perf_counter() - start)
    clip = ClipInputs(features.tokens, features.attention, features.frame_features, features.pixels, features.patch_size)
    llm = consumer(args.llm_layers)
    project = torch.randn(features.tokens.shape[-1], 576) / features.tokens.shape[-1] ** 0.5  # [C, 576] stand-in projector
    total = features.tokens.shape[0] * features.tokens.shape[1]
    print(f"clip {Path(str(source)).name}: {video.num_frames} frames x {features.tokens.shape[1]} tokens = {total}; "
          f"DINOv2-S encoder {encoder_ms:.0f} ms ({encoder_ms / video.num_frames:.1f} ms/frame, same for all); "
          f"consumer: {args.llm_layers}-layer SmolLM2-135M shape; ratio {args.ratio}; {args.threads} thread(s)")
    print("| method | tokens out | method ms | method ms/frame | unreduced ms | method+prefill ms | ceiling ms | "
          "saving / ceiling's |\n|---|---|---|---|---|---|---|---|")

    def prefill(tokens: torch.Tensor) -> None:
        with torch.inference_mode():
            llm(inputs_embeds=(tokens @ project)[None])

    flat = features.tokens.reshape(total, -1)
    for name in args.methods:
        if name == "tempme":
            print(tempme_row(loaded, features.pixels, args.ratio, prefill, args), flush=True)
            continue
        method = get_clip_method(name)
        kept = method.reduce(clip, args.ratio).num_kept
        runs = {
            "unreduced": lambda: prefill(flat),
            "method": lambda: prefill(method.reduce(clip, args.ratio).tokens),
            "ceiling": lambda: prefill(flat[:kept]),
            "method_only": lambda: method.reduce(clip, args.ratio),
        }
        times, _ = side_by_side(runs, args.rounds, args.warmup, time.perf_counter)
        ms = {key: 1000 * statistics.median(values) for key, values in times.items()}
        merit = (ms["unreduced"] - ms["method"]) / max(ms["unreduced"] - ms["ceiling"], 1e-9)
        print(f"| {name} | {kept} ({kept / total:.1%}) | {ms['method_only']:.1f} | {ms['method_only'] / video.num_frames:.2f} | "
              f"{ms['unreduced']:.0f} | {ms['method']:.0f} | {ms['ceiling']:.0f} | {merit:.3f} |", flush=True)


if __name__ == "__main__":
    main()
