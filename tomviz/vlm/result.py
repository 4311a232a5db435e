"""One vision-language request, unreduced and reduced side by side: the answers, their fidelity, the
traces of every stage and the answer's attention to the visual tokens (:func:`inspect_vlm`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tomviz.merge.plan import MergePlan
from tomviz.models.vlm import LoadedVLM
from tomviz.scores.estimate import banzhaf_game
from tomviz.trace import Trace
from tomviz.vlm.decode import answer_game, first_token_kl, generate, teacher_forced
from tomviz.vlm.encode import timed_encode
from tomviz.vlm import mustdrop
from tomviz.vlm.inputs import VLMInput, prepare
from tomviz.vlm.reduction import Reduction
from tomviz.vlm.sequence import Prefill, build_prefill, stage_trace


@dataclass
class AnswerFidelity:
    """How close the reduced model stays to the unreduced one on the unreduced answer."""

    log_likelihood: float  # log p(reference answer | reduced model), teacher-forced, summed over tokens
    reference_log_likelihood: float  # the same under the unreduced model
    first_token_kl: float  # KL(p_unreduced || p_reduced) of the first answer token
    exact_match: bool  # the two greedy answers are the same tokens


@dataclass
class VLMResult:
    """``tomviz.inspect(vlm, (image, question), place=...)``."""

    answer: str
    reference_answer: str
    trace: Trace  # the stage of the chosen place (the boundary stage when nothing is reduced)
    stages: dict[str, Trace]
    fidelity: AnswerFidelity
    timings: dict[str, float]  # encoder_s, prefill_s, decode_s, ttft_s, and the same with a "reference_" prefix
    token_counts: dict[str, int]  # visual tokens: patches (per tile), llm_input, llm_after_k, text, carried (VisionZip: CLS)
    answer_attention: np.ndarray | None  # [layers, A, V'] attention of each answer step to the visual tokens the LLM received
    answer_tokens: list[str]
    reduction: Reduction
    inputs: VLMInput
    model: LoadedVLM
    _prefill: Prefill | None = None  # the reduced LLM input (for banzhaf)
    _reference_tokens: list[int] | None = None

    def banzhaf(self, samples: int = 256, exact: bool = False, seed: int = 0, chunk: int = 8, progress=None):
        """Banzhaf values of the visual groups the LLM receives (boundary stage; FastV is not applied).

        Value of a coalition S: the teacher-forced log-probability of the unreduced answer when only
        S's visual tokens are present (:func:`tomviz.vlm.decode.answer_game`).
        Returns :class:`tomviz.scores.estimate.GameEstimate` (``values [n]``, ``stderr``, ``interactions``);
        ``self.stages["boundary"].spread(values, -1)`` puts them back on the visual tokens.
        ``progress(fraction, message)`` is called as the coalitions are evaluated.
        """
        value, players = answer_game(self.model, self._prefill, self._reference_tokens or [])
        return banzhaf_game(value, players, samples=samples, exact=exact, seed=seed, chunk=chunk, progress=progress)

    def attention_on_image(self, layer: int, step: int) -> np.ndarray:
        """``[V]`` attention of answer step ``step`` in LLM ``layer``, spread onto the visual tokens
        before any reduction at the boundary (each group's value on all its members; pruned: nan)."""
        if self.answer_attention is None:
            raise ValueError("no answer attention was recorded")
        return self.stages["boundary"].spread(self.answer_attention[layer, step], -1)


def fastv_stage(prefill: Any, keep: torch.Tensor, boundary: Trace, layer: int) -> Trace:
    """FastV's pruning inside the LLM as a one-layer trace over the visual tokens that reach it.

    ``keep``: the sequence positions FastV kept after ``layer``; ``prefill.visual``: ``[S]`` bool visual flags."""
    kept = prefill.visual[keep]  # visual flags of the kept positions
    visual_positions = prefill.visual.nonzero()[:, 0]
    kept_visual = torch.isin(visual_positions, keep[kept])  # [V'] which visual tokens survived
    dst = torch.where(kept_visual, kept_visual.long().cumsum(0) - 1, -1)[None]  # [1, V'] new index or -1 (pruned)
    return stage_trace("llm", MergePlan(dst=dst, num_out=int(kept_visual.sum())),
                  {**boundary.meta, "method": "fastv", "layer": layer})


def aim_stage(prefill: Prefill, active: list[torch.Tensor], boundary: Trace, rates: list[float]) -> Trace:
    """AIM's pruning inside the LLM as a trace with one layer per LLM layer, over the visual tokens that reach
    it: after layer ``l`` the visual keys still attended to (``active[l]`` ``[L]`` bool over the prefill),
    renumbered in order; the pruned ones -1 (masked: they stay in the sequence, out of every later attention;
    ``drop``: removed)."""
    visual_positions = prefill.visual.nonzero()[:, 0]  # [V']
    layers, removed, before = [], [], int(visual_positions.numel())
    for keys in active:
        kept = keys[visual_positions]  # [V'] bool
        dst = torch.where(kept, kept.long().cumsum(0) - 1, -1)
        layers.append(stage_trace("llm", MergePlan(dst=dst[None], num_out=int(kept.sum())), {}).layers[0])
        removed.append(before - int(kept.sum()))
        before = int(kept.sum())
    meta = {**boundary.meta, "stage": "llm", "method": "aim", "retain_rates": list(rates),
            "pruning": "drop" if prefill.aim.drop else "mask",
            "num_input_tokens": int(visual_positions.numel()), "num_protected": 0, "schedule": removed}
    return Trace(meta=meta, layers=layers)


def llm_stage(prefill: Prefill, generation: Any, boundary: Trace, reduction: Reduction) -> dict[str, Trace]:
    """``{"llm": trace}`` of what FastV or AIM did inside the LLM during ``generation``, or ``{}``."""
    if prefill.fastv is not None and generation.keep is not None:
        return {"llm": fastv_stage(prefill, generation.keep, boundary, reduction.fastv_layer)}
    if prefill.aim is not None and generation.active:
        return {"llm": aim_stage(prefill, generation.active, boundary, prefill.aim.rates)}
    request = generation.mustdrop
    if request is not None and request.kept:
        meta = {**boundary.meta, "global_thr": request.global_thr, "individual_thr": request.individual_thr}
        num_layers = len(generation.llm_visual_tokens)
        return {"llm": mustdrop.filter_stage(prefill.visual, request.kept, meta, request.layers),
                "cache": mustdrop.cache_stage(prefill.visual, request, num_layers, meta)}
    return {}


def inspect_vlm(
    loaded: LoadedVLM,
    image: Any,
    question: str,
    place: str = "boundary",
    method: str = "tome",
    ratio: float = 0.5,
    max_new_tokens: int = 24,
    record_attention: bool = True,
    **options: Any,
) -> VLMResult:
    """The unreduced and the reduced answer to ``question`` about ``image``, their fidelity,
    the traces of every stage and the answer's attention to the visual tokens.
    ``options``: the other :class:`Reduction` fields (``fastv_layer``, ``prop_attn``, ``schedule``, ``seed``, ``method_options``)."""
    inputs = prepare(loaded, image, question)
    reduction = Reduction(place=place, method=method, ratio=ratio, **options)
    reduction.check()
    encoded = timed_encode(loaded, inputs, Reduction(place="none"))  # one tower pass serves both runs where it can
    base = build_prefill(loaded, inputs, Reduction(place="none"), encoded)
    reference = generate(loaded, base, max_new_tokens)
    reduced_prefill = build_prefill(loaded, inputs, reduction, encoded) if place != "none" else base
    reduced = generate(loaded, reduced_prefill, max_new_tokens) if place != "none" else reference
    forced = teacher_forced(loaded, reduced_prefill, reference.tokens, record_attention=record_attention)
    forced_ref = teacher_forced(loaded, base, reference.tokens) if place != "none" else forced
    fidelity = AnswerFidelity(
        log_likelihood=float(forced.log_probs.sum()),
        reference_log_likelihood=float(forced_ref.log_probs.sum()),
        first_token_kl=first_token_kl(reference.first_logits, reduced.first_logits),
        exact_match=reference.tokens == reduced.tokens,
    )
    stages = dict(reduced_prefill.stages)
    boundary = stages["boundary"]
    stages.update(llm_stage(reduced_prefill, reduced, boundary, reduction))
    trace = stages.get({"encoder": "encoder", "llm": "llm"}.get(place, "boundary"), boundary)
    attention = None
    if record_attention and forced.attention:
        visual_positions = reduced_prefill.visual.nonzero()[:, 0]
        attention = torch.stack([a[:, visual_positions] for a in forced.attention]).cpu().numpy()  # [layers, A, V']
    timings = {
        "encoder_s": reduced_prefill.encoder_seconds, "prefill_s": reduced.prefill_seconds, "decode_s": reduced.decode_seconds,
        "ttft_s": reduced_prefill.encoder_seconds + reduced.prefill_seconds,
        "reference_encoder_s": base.encoder_seconds, "reference_prefill_s": reference.prefill_seconds,
        "reference_decode_s": reference.decode_seconds, "reference_ttft_s": base.encoder_seconds + reference.prefill_seconds,
    }
    llm_input = boundary.layers[-1].num_tokens
    counts = {
        "patches": boundary.meta.get("num_patches", int(np.prod(boundary.meta["patch_grid"])) * int(boundary.meta["num_tiles"])),
        "visual": boundary.num_input_tokens,
        "llm_input": llm_input,
        "llm_after_k": reduced.llm_visual_tokens[-1],
        "carried": int(boundary.meta.get("carried_tokens", 0)),  # image features that are no visual token (VisionZip's CLS)
        "text": int(reduced_prefill.embeds.shape[1] - llm_input - boundary.meta.get("carried_tokens", 0)),
    }
    tokenizer = loaded.tokenizer
    return VLMResult(
        answer=reduced.text, reference_answer=reference.text, trace=trace, stages=stages, fidelity=fidelity,
        timings=timings, token_counts=counts, answer_attention=attention,
        answer_tokens=tokenizer.convert_ids_to_tokens(reference.tokens), reduction=reduction, inputs=inputs, model=loaded,
        _prefill=reduced_prefill, _reference_tokens=reference.tokens,
    )
