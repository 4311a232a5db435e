"""A clip through a video VLM (LLaVA-OneVision layout, random weights): the boundary and inside-the-LLM stages
against the unreduced run and a zero-cost ceiling, timed side by side (``timing.side_by_side``: every
configuration once per round, in turn; medians).

Shapes: ``--llava-ov-7b`` (alias ``--gpu``) is LLaVA-OneVision-7B's (SigLIP-so400m at 384 px, patch 14: 729
patches a frame pooled 2x2 to 196, plus one newline; Qwen2-7B: 28 layers, 3584 wide, 28 heads, 4 KV heads), bf16
on CUDA, 32 frames → 6272 visual tokens. Without it, a tiny shape on the CPU (a smoke test of the same code).

* encoder: the tower, projector and pooling on every frame (``tomviz.vlm.video.encode_clip``), once;
* boundary (``--ratio``, default 0.9): each temporal method on the frames' tokens, then the LLM prefill on the
  kept ones (time to first token minus the encoder); ceiling: the first M tokens by a slice, the same prefill;
* inside the LLM (``--llm-ratio``, default 0.5): FastV at K = 2 and HoliTom's inner merge at k = 18 (the authors'
  layers; the tiny shape clamps them to its depth); their "ceiling" drops the first k tokens at the same layer
  (the attention row is still recomputed: it prices the choice and the fold, not that row);
* DyCoke while decoding (``--decode-steps``): the steps after the prefill with its cache pruning at l = 3 against
  plain decoding. tomviz masks the left-out keys (the same attention as the original's gather), so a speed-up
  is not expected here; the row reports the choice's cost.

    python benchmarks/bench_video.py --llava-ov-7b --frames 32 --rounds 3      # on a GPU
    python benchmarks/bench_video.py --vlm-smoke --rounds 1                     # the same code, tiny, on the CPU
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import side_by_side  # noqa: E402

from tomviz.inputs.video import Video  # noqa: E402
from tomviz.models.vlm import wrap  # noqa: E402
from tomviz.vlm.video import VideoStages, encode_clip, reduce_clip, video_prefill  # noqa: E402
from tomviz.vlm.video_inputs import VideoVLMInput  # noqa: E402

BOUNDARY = ("holitom", "fastvid", "dycoke", "framefusion", "frame_drop", "random")
VIDEO_TOKEN, TEXT_BEFORE, TEXT_AFTER = 151647, 14, 24  # DyCoke's image_token_start_index is 14


def onevision_config(large: bool):
    """LLaVA-OneVision-7B's shape (llava-hf/llava-onevision-qwen2-7b-ov-hf config.json, written out), or a tiny one."""
    from transformers import LlavaOnevisionConfig

    if large:
        vision = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                      image_size=384, patch_size=14)
        text = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768)
    else:
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      image_size=56, patch_size=7)
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=152064, max_position_embeddings=32768)
    return LlavaOnevisionConfig(vision_config=dict(model_type="siglip_vision_model", **vision),
                                text_config=dict(model_type="qwen2", **text), video_token_id=VIDEO_TOKEN,
                                image_token_id=VIDEO_TOKEN - 1, vision_feature_layer=-1,
                                vision_feature_select_strategy="full")


def clip_inputs(config, frames: int, device, dtype) -> VideoVLMInput:
    """A prompt of text, ``frames * n + 1`` video tokens, text; random pixels (random weights: the speed is the point)."""
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    pooled = -(-side // 2)
    text = torch.randint(100, 1000, (TEXT_BEFORE + TEXT_AFTER,))
    ids = torch.cat([text[:TEXT_BEFORE], torch.full((frames * pooled * pooled + 1,), VIDEO_TOKEN), text[TEXT_BEFORE:]])
    pixels = torch.randn(1, frames, 3, vision.image_size, vision.image_size, device=device, dtype=dtype)
    video = Video(frames=np.zeros((frames, 1, 1, 3), np.uint8), timestamps=tuple(float(t) for t in range(frames)),
                  fps=1.0, source_frames=frames, indices=tuple(range(frames)))
    return VideoVLMInput(tensors={"input_ids": ids[None].to(device)}, pixels=pixels, prompt="", question="", video=video,
                         token_id=VIDEO_TOKEN, patch_grid=(side, side), token_grid=(pooled, pooled))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llava-ov-7b", "--gpu", dest="large", action="store_true", help="LLaVA-OneVision-7B, bf16, CUDA")
    parser.add_argument("--vlm-smoke", action="store_true", help="the tiny shape on the CPU (the default without --gpu)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--llm-ratio", type=float, default=0.5)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=list(BOUNDARY))
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import LlavaOnevisionForConditionalGeneration

    device = torch.device("cuda" if args.large else "cpu")
    if args.large and not torch.cuda.is_available():
        raise SystemExit("--llava-ov-7b needs a CUDA device (use --vlm-smoke on the CPU)")
    dtype = torch.bfloat16 if args.large else torch.float32
    config = onevision_config(args.large)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaOnevisionForConditionalGeneration(config).to(dtype).eval()
    loaded = wrap("bench-onevision", model, processor=object())
    inputs = clip_inputs(config, args.frames, device, dtype)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    start = clock()
    encoded = encode_clip(loaded, inputs)
    encoder_ms = 1000 * (clock() - start)
    total = encoded.tokens.shape[0] * encoded.tokens.shape[1]
    layers = config.text_config.num_hidden_layers
    print(f"model: LlavaOnevision {'7B' if args.large else 'tiny'} shape, {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B "
          f"parameters, {device.type}, {dtype}; {args.frames} frames x {encoded.tokens.shape[1]} = {total} visual tokens "
          f"(+ newline, {TEXT_BEFORE + TEXT_AFTER} text); encoder {encoder_ms:.0f} ms (same for all)")

    def prefill_run(stages: VideoStages, reduction=None, first_k: bool = False):
        """One prefill; ``first_k``: FastV's drop with the first k visual tokens kept (no top-k)."""
        def run():
            prefill = video_prefill(loaded, inputs, encoded, reduction or reduce_clip(encoded, stages), stages)
            if first_k:
                keep = prefill.fastv.keep
                prefill.fastv = replace(prefill.fastv, select=lambda attention: torch.arange(keep, device=attention.device))
            with torch.inference_mode(), prefill.llm_state():
                return loaded.model(inputs_embeds=prefill.embeds, use_cache=False, logits_to_keep=1).logits
        return run

    timed = lambda runs: {k: 1000 * statistics.median(v) for k, v in side_by_side(runs, args.rounds, args.warmup, clock)[0].items()}
    boundary_rows(args, encoded, total, prefill_run, timed)
    llm_rows(args, layers, total, prefill_run, timed)
    decode_rows(args, loaded, inputs, encoded, layers, timed)


def merit(ms: dict[str, float]) -> str:
    """The method's saving over the ceiling's, ``(unreduced - method) / (unreduced - ceiling)``; "n/a" when the
    ceiling saves nothing measurable (the tiny shape, a noisy machine)."""
    saving = ms["unreduced"] - ms["ceiling"]
    return "n/a" if saving <= 0 else f"{(ms['unreduced'] - ms['method']) / saving:.3f}"


def boundary_rows(args, encoded, total, prefill_run, timed) -> None:
    from tomviz.merge.temporal.base import reduction_from_keep

    print(f"\nBoundary, ratio {args.ratio}: method + prefill against the unreduced prefill and the ceiling (a slice to "
          "the same M tokens)\n\n| method | tokens to the LLM | method ms | unreduced ms | method+prefill ms | ceiling ms | "
          "saving / ceiling's |\n|---|---|---|---|---|---|---|")
    for name in args.methods:
        stages = VideoStages(boundary=name, boundary_ratio=args.ratio)
        kept = reduce_clip(encoded, stages).num_kept
        first = torch.zeros(total, dtype=torch.bool, device=encoded.tokens.device)
        first[:kept] = True
        ms = timed({"unreduced": prefill_run(VideoStages()), "method": prefill_run(stages),
                    "ceiling": prefill_run(VideoStages(), reduction_from_keep(encoded.tokens, first)),
                    "method_only": lambda: reduce_clip(encoded, stages)})
        print(f"| {name} | {kept} ({kept / total:.1%}) | {ms['method_only']:.1f} | {ms['unreduced']:.0f} | "
              f"{ms['method']:.0f} | {ms['ceiling']:.0f} | {merit(ms)} |", flush=True)


def llm_rows(args, layers, total, prefill_run, timed) -> None:
    from tomviz.merge.fastv import fastv_keep_count

    print(f"\nInside the LLM, ratio {args.llm_ratio}: prefill (first token) against the unreduced one and the same drop "
          "of the first k tokens\n\n| method | layer | visual tokens from it | unreduced ms | method ms | ceiling ms | "
          "saving / ceiling's |\n|---|---|---|---|---|---|---|")
    for name, layer in (("fastv", 2), ("holitom", 18)):
        layer = min(layer, layers - 1)
        stages = VideoStages(llm=name, llm_ratio=args.llm_ratio, llm_layer=layer)
        keep = max(1, fastv_keep_count(total, args.llm_ratio))
        ceiling = VideoStages(llm="fastv", llm_ratio=args.llm_ratio, llm_layer=layer)
        ms = timed({"unreduced": prefill_run(VideoStages()), "method": prefill_run(stages),
                    "ceiling": prefill_run(ceiling, first_k=True)})
        print(f"| {name} | {layer} | {keep} of {total} | {ms['unreduced']:.0f} | {ms['method']:.0f} | {ms['ceiling']:.0f} | "
              f"{merit(ms)} |", flush=True)


def decode_rows(args, loaded, inputs, encoded, layers, timed) -> None:
    stages = VideoStages(llm="dycoke", llm_ratio=0.8, llm_layer=min(3, layers - 1))
    steps = []

    def decode(chosen: VideoStages):
        def run():
            prefill = video_prefill(loaded, inputs, encoded, reduce_clip(encoded, chosen), chosen)
            state = prefill.llm_state()
            with torch.inference_mode(), state:
                out = loaded.model(inputs_embeds=prefill.embeds, use_cache=True, logits_to_keep=1)
                cache, token = out.cache, out.logits[:, -1:].argmax(-1)
                for _ in range(args.decode_steps):
                    out = loaded.model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
                    cache, token = out.cache, out.logits[:, -1:].argmax(-1)
            if state.dycoke is not None:
                steps[:] = [None if s is None else int(s.numel()) for s in state.dycoke.steps]
        return run

    ms = timed({"plain": decode(VideoStages()), "dycoke": decode(stages)})
    pruned = sum(s is not None for s in steps)
    print(f"\nDyCoke while decoding (l = {stages.layer}, p = 0.8, {args.decode_steps} steps after the prefill): plain "
          f"{ms['plain']:.0f} ms, with DyCoke {ms['dycoke']:.0f} ms; {pruned} of {len(steps)} steps pruned "
          f"(image tokens attended to: {steps})")


if __name__ == "__main__":
    main()
