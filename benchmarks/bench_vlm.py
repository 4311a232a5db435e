"""Speed of visual-token reduction inside a VLM, against a zero-cost ceiling measured in the same run.

Random weights in SmolVLM-256M's exact shape (config below: SigLIP-B/16 at 512 px, pixel shuffle 4,
a 30-layer 576-wide Llama), one 512x512 tile (1024 patches → 64 visual tokens), a prompt of
``--text-tokens`` text tokens, batch 1, no grad. Each configuration is timed once per round in turn
(``benchmarks/timing.side_by_side``), medians reported.

* encoder: the vision encoder + connector (``tomviz.vlm.encode``). Merged: ToMe at ``--encoder-ratio``
  (constant schedule) with the unmerge before the pixel shuffle. Ceiling: the same schedule, but every
  block drops its last r tokens with a slice and the encoder output is zero-padded back to 1024 tokens
  (no matching, no merge arithmetic, no attention bias, no unmerge).
* boundary: the reduction of ``--boundary-ratio`` of the 64 visual tokens plus the LLM prefill
  (``tomviz.vlm.to_prefill`` + the LLM forward that yields the first token). Ceiling: the visual features
  sliced to the first k, no bias. Baseline: the unreduced prefill. ``tome + VTU``: DyMU's virtual token
  unmerging in the LLM. The last column: KL of each row's next-token distribution from the unreduced one
  (random weights: how close the computation stays, not answer quality).
* time to first token = encoder + prefill (the first token's logits come out of the prefill).
* AIM: its merging at the boundary (plain-mean bipartite, AIM's output order) is a row of the boundary table;
  its PageRank pruning inside the LLM (masking, the authors' schedule: layers 15..22 of 30 prune 1/8 each)
  keeps every token, so it has no ceiling: its row shows its own cost against the unreduced prefill.
* Qwen2-VL (``--qwen2vl PX``, its own table, nothing else): the vision tower of Qwen2-VL-2B-Instruct (665M
  parameters, random weights) on one PX x PX image, through ``vlm.encode`` (tower + 2 x 2 merger): unmerged, ToMe
  at ``--encoder-ratio`` inside it (merge, compute, unmerge), and the slicing ceiling as for SmolVLM.
* MustDrop (``--mustdrop``, its own table, ``benchmarks/vlm_mustdrop.py``): the whole method (3x3 window merging after CLIP layer 0, the key set,
  the filtering at LLM layers 2/6/10/14 with the authors' 64-token thresholds, the KV-cache eviction) on a
  LLaVA-1.5 layout in SmolVLM-256M's widths at LLaVA-1.5's grid (CLIP 768 x 12 at 336 px, patch 14: 576 patches
  + CLS; an image whose top half has flat 3x3-patch windows, which merge, and whose bottom half is noise). Timed: time to first token (tower +
  stages 1-3 + prefill) and ``--decode-steps`` greedy steps on the evicted caches. Ceiling: the same token
  counts at every stage by slicing (the tower's tokens cut after layer 0, the LLM's visual tokens cut to the
  same counts at the same layers, the same eviction and renumbering), with no similarity, key set or attention.
* VisionZip (``--visionzip``, its own table): it needs a CLIP tower whose CLS the projector drops, so it runs
  on a LLaVA-1.5 layout in SmolVLM-256M's widths (CLIP 768 x 12 at 224 px, patch 16: 196 patches + CLS,
  features of layer -2; the same 30-layer Llama), 196 → 64 per image (54 + 10, the README's setting).
  Timed: vision tower + VisionZip + projector + LLM prefill. Ceiling: the same tower, the hidden states
  sliced to CLS + the first 63 patches before the projector, the same sequence building.

    python benchmarks/bench_vlm.py              # CPU, 1 thread
    python benchmarks/bench_vlm.py --llava7b    # LLaVA-1.5-7B-shaped, fp16, on CUDA (boundary + FastV only)
    python benchmarks/bench_vlm.py --visionzip --skip-encoder   # + the VisionZip table (CPU)
    python benchmarks/bench_vlm.py --llava7b --visionzip           # the same on LLaVA-1.5-7B's shape, fp16, CUDA
    python benchmarks/bench_vlm.py --qwen2vl 224 --cpu-time        # only the Qwen2-VL-2B vision-tower table (CPU)
    python benchmarks/bench_vlm.py --mustdrop --skip-encoder    # + the MustDrop table (CPU; --llava7b: CUDA)
"""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import replace
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import side_by_side  # noqa: E402
from tomviz import vlm  # noqa: E402
from tomviz.merge.engine import current_state  # noqa: E402
from tomviz.merge.plan import MergePlan  # noqa: E402
from tomviz.models import llm  # noqa: E402
from tomviz.models.vlm import EncoderState, wrap  # noqa: E402
from tomviz.vlm.encode import boundary_method  # noqa: E402

IMAGE_TOKEN = 49190


def smolvlm_256m_config():
    """SmolVLM-256M-Instruct's shape (HuggingFaceTB/SmolVLM-256M-Instruct config.json, written out)."""
    from transformers import SmolVLMConfig

    return SmolVLMConfig(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=512, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
        text_config=dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49280, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=2),
        scale_factor=4, image_token_id=IMAGE_TOKEN,
    )


def llava_7b_config():
    """LLaVA-1.5-7B's shape: CLIP ViT-L/14 at 336 px (576 visual tokens), Llama-2-7B."""
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                           num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768),
        text_config=dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=32064),
        image_token_id=32000, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )


@contextlib.contextmanager
def slicing_encoder(num_patches: int):
    """The encoder ceiling: blocks drop their last r tokens with a slice; the encoder output is
    zero-padded back to ``num_patches`` so that the pixel shuffle runs (instead of the unmerge)."""
    original = EncoderState.after_attention

    def drop(self, layer, x, *projections_and_heads, **segments):
        r = self.schedule[layer]
        self.removed.append(r)
        self.anchors = torch.arange(x.shape[1] - r, device=x.device)[None]  # Qwen2-VL: the kept tokens' positions
        return x[:, : x.shape[1] - r]

    def pad(module, args, output):  # output: [B, N, C], or a flat tower's [N, C]
        if isinstance(current_state(), EncoderState) and output.shape[-2] < num_patches:
            return F.pad(output, (0, 0, 0, num_patches - output.shape[-2]))
        return None

    EncoderState.after_attention = drop
    try:
        yield lambda post: post.register_forward_hook(pad)
    finally:
        EncoderState.after_attention = original


def read_clock(args, device: torch.device):
    """The clock of the run: CPU time with ``--cpu-time`` on CPU, else the wall clock (CUDA synchronised)."""
    read = time.process_time if args.cpu_time and device.type == "cpu" else time.perf_counter

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return read()

    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--text-tokens", type=int, default=30)
    parser.add_argument("--encoder-ratio", type=float, default=0.5)
    parser.add_argument("--boundary-ratio", type=float, default=0.75)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-encoder", action="store_true")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time (time.process_time) instead of the wall clock: steadier on a shared machine")
    parser.add_argument("--llava7b", action="store_true", help="LLaVA-1.5-7B shape, fp16 on CUDA")
    parser.add_argument("--visionzip", action="store_true", help="also the VisionZip table (LLaVA-1.5 layout, SmolVLM widths)")
    parser.add_argument("--qwen2vl", type=int, default=0, metavar="PX",
                        help="only the Qwen2-VL-2B vision-tower table, on a PX x PX image (448: 1024 patches)")
    parser.add_argument("--mustdrop", action="store_true", help="also the MustDrop table (LLaVA-1.5 layout, SmolVLM widths)")
    parser.add_argument("--decode-steps", type=int, default=16, help="greedy steps timed in the MustDrop table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.qwen2vl:
        return qwen2_vl_encoder_table(args, read_clock(args, torch.device("cpu")))
    device = torch.device("cuda" if args.llava7b and torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if args.llava7b:
        from transformers import LlavaForConditionalGeneration

        config = llava_7b_config()
        with torch.device(device):
            model = LlavaForConditionalGeneration(config).to(dtype).eval()
        size = config.vision_config.image_size
        image_token, patches = config.image_token_id, (size // config.vision_config.patch_size) ** 2
        visual = patches
        args.skip_encoder = True
    else:
        from transformers import SmolVLMForConditionalGeneration

        config = smolvlm_256m_config()
        model = SmolVLMForConditionalGeneration(config).eval()
        image_token, size, patches, visual = IMAGE_TOKEN, 512, 1024, 64
    print(f"model: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{device.type}, {dtype}, threads {torch.get_num_threads()}, clock {'CPU time' if args.cpu_time else 'wall'}")
    loaded = wrap("bench", model, processor=object())
    text = torch.randint(100, 1000, (args.text_tokens,))
    input_ids = torch.cat([text[:5], torch.full((visual,), image_token), text[5:]])[None].to(device)
    pixels = torch.randn(1, 3, size, size, dtype=dtype, device=device)
    if not args.llava7b:
        pixels = pixels[:, None]  # [1, tiles, 3, H, W]
    inputs = vlm.VLMInput(tensors={"input_ids": input_ids, "pixel_values": pixels}, prompt="", question="", image=None,
                          meta={"image_size": [size, size]})

    clock = read_clock(args, device)

    med: dict = {}
    if not args.skip_encoder:
        none = vlm.Reduction()
        merged = vlm.Reduction("encoder", "tome", args.encoder_ratio)
        post = loaded.vision.post_layernorm

        def ceiling_run():
            with slicing_encoder(patches) as add_pad:
                handle = add_pad(post)
                try:
                    return vlm.encode(loaded, inputs, merged)
                finally:
                    handle.remove()

        runs = {"base": lambda: vlm.encode(loaded, inputs, none), "merged": lambda: vlm.encode(loaded, inputs, merged),
                "ceiling": ceiling_run}
        times, results = side_by_side(runs, args.rounds, args.warmup, clock)
        med["encoder"] = {k: statistics.median(v) for k, v in times.items()}
        removed = results["merged"].stages["encoder"].meta["schedule"]
        print(f"encoder ToMe ratio {args.encoder_ratio}: schedule {removed} ({patches} → {patches - sum(removed)} tokens)")

    encoded = vlm.encode(loaded, inputs, vlm.Reduction())
    keep = visual - round(args.boundary_ratio * visual)

    def prefill_run(red):
        resolved = replace(encoded, boundary_method=boundary_method(red))  # the request's method, as encode resolves it

        def fn():
            prefill = vlm.to_prefill(loaded, inputs, resolved, red)
            with torch.inference_mode(), prefill.llm_state():
                return model(inputs_embeds=prefill.embeds, use_cache=True, logits_to_keep=1).logits

        return fn

    def ceiling_prefill():
        sliced = vlm.Encoded(features=encoded.features[:, :keep], plan=MergePlan.identity(1, keep, device), merged=False, stages={},
                             meta=encoded.meta, token_grid=encoded.token_grid, num_tiles=encoded.num_tiles)
        ids = input_ids[0]
        visual_pos = (ids == image_token).nonzero()[:, 0]
        keep_seq = torch.ones_like(ids, dtype=torch.bool)
        keep_seq[visual_pos[keep:]] = False
        short = vlm.VLMInput(tensors={"input_ids": input_ids[:, keep_seq]}, prompt="", question="", image=None, meta=inputs.meta)
        prefill = vlm.to_prefill(loaded, short, sliced, vlm.Reduction())
        with torch.inference_mode(), llm.LLMState(visual=prefill.visual):
            return model(inputs_embeds=prefill.embeds, use_cache=True, logits_to_keep=1).logits

    ratio = args.boundary_ratio
    runs = {
        "base": prefill_run(vlm.Reduction()),
        "ceiling": ceiling_prefill,
        "tome": prefill_run(vlm.Reduction("boundary", "tome", ratio)),
        "tome (no bias)": prefill_run(vlm.Reduction("boundary", "tome", ratio, prop_attn=False)),
        "tome + VTU": prefill_run(vlm.Reduction("boundary", "tome", ratio, vtu=True)),
        "random": prefill_run(vlm.Reduction("boundary", "random_prune", ratio)),
        "downsample": prefill_run(vlm.Reduction("boundary", "downsample", ratio)),
        "fastv K=2": prefill_run(vlm.Reduction("llm", "fastv", ratio, fastv_layer=2)),
        "aim merge": prefill_run(vlm.Reduction("boundary", "aim", ratio)),
        "aim LLM pruning (mask)": prefill_run(vlm.Reduction("llm", "aim", ratio)),
        "aim LLM pruning (drop)": prefill_run(vlm.Reduction("llm", "aim", ratio, method_options={"drop": True})),
    }
    times, outputs = side_by_side(runs, args.rounds * 3, args.warmup, clock)
    med["prefill"] = {k: statistics.median(v) for k, v in times.items()}
    reference = outputs["base"][0, -1].float().log_softmax(-1)  # [vocab] next-token distribution, unreduced
    kl = {k: float((reference.exp() * (reference - out[0, -1].float().log_softmax(-1))).sum()) for k, out in outputs.items()}

    if "encoder" in med:
        e = med["encoder"]
        print(f"\n| encoder (ratio {args.encoder_ratio}) | ms | speed-up | / ceiling's speed-up | time to first token ms |")
        print("|---|---|---|---|---|")
        base_prefill = med["prefill"]["base"]
        for key in ("base", "ceiling", "merged"):
            speedup = e["base"] / e[key]
            ceiling = e["base"] / e["ceiling"]
            print(f"| {key} | {e[key] * 1000:.0f} | {speedup:.2f}x | {speedup / ceiling:.2f} "
                  f"| {(e[key] + base_prefill) * 1000:.0f} |")
    p = med["prefill"]
    ceiling = p["base"] / p["ceiling"]
    encoder_ms = med["encoder"]["base"] if "encoder" in med else 0.0
    print(f"\n| boundary / LLM ({visual} → {keep} visual tokens, {args.text_tokens} text) | prefill ms | speed-up | "
          f"speed-up / ceiling's | time to first token ms | next-token KL from unreduced |")
    print("|---|---|---|---|---|---|")
    for key, value in p.items():
        speedup = p["base"] / value
        print(f"| {key} | {value * 1000:.1f} | {speedup:.2f}x | {speedup / ceiling:.2f} | {(encoder_ms + value) * 1000:.0f} "
              f"| {kl[key]:.2e} |")
    if args.visionzip:
        visionzip_table(args, clock, device, dtype)
    if args.mustdrop:
        from benchmarks.vlm_mustdrop import mustdrop_table

        mustdrop_table(args, clock, device, dtype, llava_7b_config() if args.llava7b else llava_smolvlm_widths_config(336, 14))


def llava_smolvlm_widths_config(image_size: int = 224, patch_size: int = 16):
    """A LLaVA-1.5 layout in SmolVLM-256M's widths: CLIP 768 x 12 at 224 px / patch 16 (196 patches + CLS,
    features of layer -2, CLS dropped; MustDrop: 336 px / patch 14, LLaVA-1.5's 24 x 24), SmolVLM-256M's 30-layer Llama."""
    from transformers import LlavaConfig

    text = smolvlm_256m_config().text_config.to_dict()
    return LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=image_size, patch_size=patch_size),
        text_config=text, image_token_id=IMAGE_TOKEN, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )


def visionzip_table(args, clock, device: torch.device, dtype: torch.dtype) -> None:
    """VisionZip (196 → 54 + 10 per image; LLaVA-1.5-7B's shape with ``--llava7b``: 576 → 54 + 10) against
    slicing before the projector, in the same run."""
    from transformers import LlavaForConditionalGeneration

    from tomviz.vlm.sequence import ordered_prefill

    torch.manual_seed(0)
    config = llava_7b_config() if args.llava7b else llava_smolvlm_widths_config()
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype).eval()
    loaded = wrap("bench-llava", model, processor=object())
    size, keep = config.vision_config.image_size, 64
    side = size // config.vision_config.patch_size
    patches = side * side
    text = torch.randint(100, 1000, (args.text_tokens,))
    ids = torch.cat([text[:5], torch.full((patches,), config.image_token_id), text[5:]])[None].to(device)
    pixels = torch.randn(1, 3, size, size, dtype=dtype, device=device)
    inputs = vlm.VLMInput(tensors={"input_ids": ids, "pixel_values": pixels}, prompt="", question="", image=None,
                          meta={"image_size": [size, size]})
    ratio = (patches - keep) / patches

    def prefill_forward(prefill):
        with torch.inference_mode(), prefill.llm_state():
            return model(inputs_embeds=prefill.embeds, use_cache=True, logits_to_keep=1).logits

    red = vlm.Reduction("boundary", "visionzip", ratio)
    dst = torch.where(torch.arange(patches, device=device) < keep - 1, torch.arange(patches, device=device), -1)[None]
    carried = torch.arange(keep, device=device) == 0  # the CLS token, then the first 63 patches

    def ceiling():
        with torch.inference_mode():
            hidden = loaded.adapter.pre_projector(model, inputs.tensors)[:, :keep]  # [1, 64, 768] CLS + 63 patches
            features = loaded.adapter.project(model, hidden)
        encoded = vlm.Encoded(features=features, plan=MergePlan(dst, keep - 1), merged=True, stages={},
                              meta={"token_grid": [side, side], "num_tiles": 1}, token_grid=(side, side), num_tiles=1)
        return prefill_forward(ordered_prefill(loaded, inputs, encoded, red, features, encoded.plan, carried))

    runs = {"base": lambda: prefill_forward(vlm.build_prefill(loaded, inputs, vlm.Reduction())),
            "ceiling": ceiling,
            "visionzip 54 + 10": lambda: prefill_forward(vlm.build_prefill(loaded, inputs, vlm.Reduction("boundary", "visionzip", ratio)))}
    times, outputs = side_by_side(runs, args.rounds * 3, args.warmup, clock)
    med = {k: statistics.median(v) for k, v in times.items()}
    reference = outputs["base"][0, -1].float().log_softmax(-1)
    shape = "LLaVA-1.5-7B shape" if args.llava7b else "LLaVA-1.5 layout in SmolVLM-256M widths"
    print(f"\n| VisionZip, {shape} ({patches} → {keep} visual tokens, {args.text_tokens} text) "
          "| TTFT ms (tower + reduction + prefill) | speed-up | speed-up / ceiling's | next-token KL from unreduced |")
    print("|---|---|---|---|---|")
    for key, value in med.items():
        kl = float((reference.exp() * (reference - outputs[key][0, -1].float().log_softmax(-1))).sum())
        speedup = med["base"] / value
        print(f"| {key} | {value * 1000:.1f} | {speedup:.2f}x | {speedup / (med['base'] / med['ceiling']):.2f} | {kl:.2e} |")


def qwen2_vl_2b_config():
    """Qwen2-VL-2B-Instruct's vision tower (Qwen/Qwen2-VL-2B-Instruct config.json, written out: 32 blocks of
    1280, 16 heads, MLP ratio 4, patch 14, 2 x 2 merger into 1536) with a one-layer stub LLM (only the encoder
    is timed)."""
    from transformers import Qwen2VLConfig

    vision = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    text = dict(hidden_size=1536, intermediate_size=256, num_hidden_layers=1, num_attention_heads=12,
                num_key_value_heads=2, vocab_size=1000, bos_token_id=None, eos_token_id=None,
                rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6})
    return Qwen2VLConfig(vision_config=vision, text_config=text, image_token_id=999, video_token_id=998,
                         vision_start_token_id=997, vision_end_token_id=996)


def qwen2_vl_encoder_table(args, clock) -> None:
    """Qwen2-VL-2B's vision tower (``vlm.encode``: tower + merger) unmerged, with ToMe at ``--encoder-ratio``
    (merging within the image, destinations' rotary positions, unmerge before the 2 x 2 merger) and the
    zero-cost ceiling (every block slices its last r tokens, the output zero-padded back), in the same run."""
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    config = qwen2_vl_2b_config()
    model = Qwen2VLForConditionalGeneration(config).eval()
    loaded = wrap("bench-qwen2-vl", model, processor=object())
    side = args.qwen2vl // 14
    patches = side * side
    ids = torch.cat([torch.randint(10, 900, (5,)), torch.full((patches // 4,), 999), torch.randint(10, 900, (25,))])
    tensors = {"input_ids": ids[None], "pixel_values": torch.randn(patches, 3 * 2 * 14 * 14),
               "image_grid_thw": torch.tensor([[1, side, side]])}
    inputs = vlm.VLMInput(tensors=tensors, prompt="", question="", image=None, meta={"image_size": [side * 14] * 2})
    tower = sum(p.numel() for p in loaded.vision.parameters()) / 1e6
    print(f"Qwen2-VL-2B vision tower: {tower:.0f}M parameters, {side * 14} px ({patches} patches → {patches // 4} "
          f"LLM tokens), threads {torch.get_num_threads()}")
    merged = vlm.Reduction("encoder", "tome", args.encoder_ratio)

    def ceiling_run():
        with slicing_encoder(patches) as add_pad:
            handle = add_pad(loaded.vision.blocks[-1])
            try:
                return vlm.encode(loaded, inputs, merged)
            finally:
                handle.remove()

    runs = {"base": lambda: vlm.encode(loaded, inputs, vlm.Reduction()), "ceiling": ceiling_run,
            "tome": lambda: vlm.encode(loaded, inputs, merged)}
    times, results = side_by_side(runs, args.rounds, args.warmup, clock)
    med = {k: statistics.median(v) for k, v in times.items()}
    removed = results["tome"].stages["encoder"].meta["schedule"]
    print(f"ToMe ratio {args.encoder_ratio}: {patches} → {patches - sum(removed)} tokens by the last block")
    print(f"\n| Qwen2-VL-2B vision tower, {side * 14} px, ratio {args.encoder_ratio} | encoder ms | speed-up "
          "| speed-up / ceiling's |")
    print("|---|---|---|---|")
    for key, value in med.items():
        speedup = med["base"] / value
        print(f"| {key} | {value * 1000:.0f} | {speedup:.2f}x | {speedup / (med['base'] / med['ceiling']):.2f} |")


if __name__ == "__main__":
    main()
