"""The MustDrop table of ``benchmarks/bench_vlm.py`` (``--mustdrop``): the whole method against a slicing ceiling.

MustDrop (liuting20/MustDrop @909afa5) on a LLaVA-1.5 layout: 3x3 window merging after CLIP layer 0, the key set,
the filtering at LLM layers 2/6/10/14 with the authors' 64-token thresholds, the KV-cache eviction. Ceiling: the same
token counts at every stage by slicing (:class:`SlicedStages`, the tower's tokens cut after layer 0), with no window
similarity, key set or attention rows. Timed: time to first token and greedy decoding per token.
"""
from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from tomviz import vlm
from tomviz.merge.mustdrop import THRESHOLDS, stage_positions
from tomviz.models import llm, patching
from tomviz.models.mustdrop import MustDropRequest
from tomviz.models.vlm import wrap


class NoText:
    """A stand-in tokenizer for random weights: no stop token, no text."""

    eos_token_id = None

    def decode(self, ids, **options) -> str:
        return ""


@dataclass
class SlicedStages(MustDropRequest):
    """MustDrop's ceiling inside the LLM: at each pruning layer the first ``counts[s]`` visual tokens stay (a slice;
    run with :func:`no_filter_attention`, no attention is computed); eviction and renumbering as MustDrop's."""

    counts: tuple[int, ...] = ()

    def filter(self, probs: torch.Tensor, held: torch.Tensor | None, num_visual: int, prefix: int) -> None:
        held = torch.arange(prefix, device=self.key.device) if held is None else held
        kept_visual = torch.arange(self.counts[len(self.kept)], device=held.device)
        self.kept.append(held[stage_positions(kept_visual, self.visual_start, num_visual, held.shape[0])])


@contextlib.contextmanager
def no_filter_attention():
    """The LLM's MustDrop step without its attention rows (the ceiling's filter reads none)."""
    original = llm.layer_logits
    llm.layer_logits = lambda layer, hidden, *rest: hidden.new_zeros(1, 1, 1, 1)
    try:
        yield
    finally:
        llm.layer_logits = original


def block_image(size: int, patch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[1, 3, size, size]``: the top half random colours on blocks of 3 x 3 patches (MustDrop's windows: they
    merge), the bottom half pixel noise (its windows stay)."""
    blocks = torch.randn(1, 3, size // (3 * patch), size // (3 * patch))
    image = F.interpolate(blocks, size=(size, size), mode="nearest")
    half = size // (6 * patch) * 3 * patch  # a whole number of window rows
    image[:, :, half:] = torch.randn(1, 3, size - half, size)
    return image.to(device=device, dtype=dtype)


def mustdrop_table(args, clock, device: torch.device, dtype: torch.dtype, config) -> None:
    """MustDrop end to end (the authors' 64-token thresholds) against slicing to the same counts, same run, on a
    LLaVA-1.5-layout ``config`` (a ``LlavaConfig`` with a CLIP tower)."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype).eval()
    loaded = wrap("bench-llava", model, processor=NoText())  # greedy decoding needs only a decode() for its text
    size, patch = config.vision_config.image_size, config.vision_config.patch_size
    patches = (size // patch) ** 2
    text = torch.randint(100, 1000, (args.text_tokens,))

    def inputs_with(visual: int) -> vlm.VLMInput:
        ids = torch.cat([text[:5], torch.full((visual,), config.image_token_id), text[5:]])[None].to(device)
        return vlm.VLMInput(tensors={"input_ids": ids, "pixel_values": block_image(size, patch, dtype, device)},
                            prompt="", question="", image=None, meta={"image_size": [size, size]})

    torch.manual_seed(1)
    inputs = inputs_with(patches)
    global_thr, individual_thr = THRESHOLDS[64]
    red = vlm.Reduction("llm", "mustdrop", 0.5, method_options={"global_thr": global_thr, "individual_thr": individual_thr})
    probe = vlm.build_prefill(loaded, inputs, red)
    state = probe.llm_state()
    with torch.inference_mode(), state:
        model(inputs_embeds=probe.embeds, use_cache=True, logits_to_keep=1)
    merged = int(probe.visual.sum())
    counts = [int(probe.visual[k].sum()) for k in state.mustdrop.kept]
    torch.manual_seed(1)
    short = inputs_with(merged)

    def cut(module, args, kwargs):  # CLS + the first ``merged`` patches go on after layer 0
        if args:
            return (args[0][:, :1 + merged], *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"][:, :1 + merged]}

    def ceiling() -> vlm.Prefill:
        handle = patching.apply(loaded.vision).blocks[1].register_forward_pre_hook(cut, with_kwargs=True)
        try:
            prefill = vlm.build_prefill(loaded, short, vlm.Reduction())
        finally:
            handle.remove()
        request = probe.mustdrop
        prefill.mustdrop = SlicedStages(**{f.name: getattr(request, f.name) for f in fields(request) if f.init},
                                        counts=tuple(counts))
        return prefill

    builds = {"unreduced": lambda: vlm.build_prefill(loaded, inputs, vlm.Reduction()), "ceiling (slice)": ceiling,
              "MustDrop": lambda: vlm.build_prefill(loaded, inputs, red)}
    mustdrop_rows(args, clock, loaded, builds, f"{patches} → {merged} after the windows → {' → '.join(map(str, counts))}")


def mustdrop_rows(args, clock, loaded, builds: dict, flow: str) -> None:
    """Time each build's time to first token and, from a second run with ``--decode-steps`` more tokens, the decoding
    time per token (that run's time minus the first's), each configuration in turn per round."""
    ttft: dict = {key: [] for key in builds}
    decode: dict = {key: [] for key in builds}
    first: dict = {}
    for round_index in range(args.warmup + args.rounds):
        for key, build in builds.items():
            with no_filter_attention() if key.startswith("ceiling") else contextlib.nullcontext():
                start = clock()
                first[key] = vlm.generate(loaded, build(), 1).first_logits
                elapsed = clock() - start
                start = clock()
                steps = vlm.generate(loaded, build(), 1 + args.decode_steps)
                whole = clock() - start
            if round_index >= args.warmup:
                ttft[key].append(elapsed)
                decode[key].append((whole - elapsed) / max(1, len(steps.tokens) - 1))
    t = {k: statistics.median(v) for k, v in ttft.items()}
    d = {k: statistics.median(v) for k, v in decode.items()}
    reference = first["unreduced"].log_softmax(-1)
    print(f"\n| MustDrop ({flow} visual tokens, {args.text_tokens} text) | TTFT ms | speed-up | speed-up / ceiling's "
          "| decode ms / token | speed-up | speed-up / ceiling's | next-token KL from unreduced |")
    print("|---|---|---|---|---|---|---|---|")
    for key in builds:
        kl = float((reference.exp() * (reference - first[key].log_softmax(-1))).sum())
        up, down = t["unreduced"] / t[key], d["unreduced"] / d[key]
        print(f"| {key} | {t[key] * 1000:.1f} | {up:.2f}x | {up / (t['unreduced'] / t['ceiling (slice)']):.2f} "
              f"| {d[key] * 1000:.2f} | {down:.2f}x | {down / (d['unreduced'] / d['ceiling (slice)']):.2f} | {kl:.2e} |")
