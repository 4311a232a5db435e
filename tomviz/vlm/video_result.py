"""One clip and question, unreduced and reduced side by side (:func:`ask_video` → :class:`VideoAnswer`).
The stages are described in :mod:`tomviz.vlm.video`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tomviz.inputs.video import Video, VideoLimits
from tomviz.models.vlm import LoadedVLM
from tomviz.trace import Trace
from tomviz.vlm.decode import first_token_kl, generate, teacher_forced
from tomviz.vlm.result import AnswerFidelity
from tomviz.vlm.video import VideoStages, encode_clip, reduce_clip, stage_traces, video_prefill
from tomviz.vlm.video_inputs import DEFAULT_VLM_FRAMES, prepare_video


@dataclass
class VideoAnswer:
    """``tomviz.vlm.ask_video(vlm, clip, question, ...)``."""

    answer: str
    reference_answer: str  # without any reduction
    trace: Trace  # the last stage that ran (``stages["llm"]`` / ``["cache"]``, else ``["boundary"]``)
    stages: dict[str, Trace]  # each over the clip's T * N tokens, frame-major (meta["frame_grid"])
    fidelity: AnswerFidelity
    timings: dict[str, float]  # encoder_s, prefill_s, decode_s, and the same with a "reference_" prefix
    token_counts: dict[str, int]  # clip (T * N), llm_input, llm_after_k, text (the reduced prompt's other tokens)
    video: Video
    reduction: VideoStages

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest (the CLI's stats.json, the app's API)."""
        frames, rows, cols = self.trace.frame_grid
        return {
            "answer": self.answer, "reference_answer": self.reference_answer, "frame_grid": [frames, rows, cols],
            "boundary": self.reduction.boundary, "boundary_ratio": self.reduction.boundary_ratio,
            "llm": self.reduction.llm, "llm_ratio": self.reduction.llm_ratio,
            "llm_layer": self.reduction.layer if self.reduction.llm != "none" else None,
            "token_counts": dict(self.token_counts), "timings": dict(self.timings),
            "tokens_per_frame": self.stages["boundary"].tokens_per_frame().tolist(),
            "exact_match": self.fidelity.exact_match, "first_token_kl": self.fidelity.first_token_kl,
            "log_likelihood": self.fidelity.log_likelihood,
            "reference_log_likelihood": self.fidelity.reference_log_likelihood,
            "cache_steps": self.stages["cache"].meta["cache_steps"] if "cache" in self.stages else None,
        }


def ask_video(
    loaded: LoadedVLM,
    clip: Any,
    question: str,
    method: str = "holitom",
    ratio: float = 0.9,
    place: str = "boundary",
    method_options: dict[str, Any] | None = None,
    layer: int | None = None,
    stages: VideoStages | None = None,
    num_frames: int = DEFAULT_VLM_FRAMES,
    max_new_tokens: int = 24,
    limits: VideoLimits = VideoLimits(),
) -> VideoAnswer:
    """The greedy answers to ``question`` about ``clip`` without and with one reduction: ``method`` at ``place``
    (``"boundary"``: a clip method at ``ratio``; ``"llm"``: ``fastv`` / ``holitom`` / ``dycoke`` at ``layer``), or
    ``stages`` for both at once (e.g. HoliTom's outer stage then its inner merge)."""
    stages = stages or VideoStages.at(place, method, ratio, method_options, layer)
    stages.check(len(loaded.language_model.layers))
    inputs = prepare_video(loaded, clip, question, num_frames, limits)
    encoded = encode_clip(loaded, inputs)
    unreduced = reduce_clip(encoded, VideoStages())
    base = video_prefill(loaded, inputs, encoded, unreduced, VideoStages())
    reference = generate(loaded, base, max_new_tokens)
    reduction = reduce_clip(encoded, stages)
    prefill = video_prefill(loaded, inputs, encoded, reduction, stages)
    reduced = generate(loaded, prefill, max_new_tokens)
    forced = teacher_forced(loaded, prefill, reference.tokens)
    forced_reference = teacher_forced(loaded, base, reference.tokens)
    fidelity = AnswerFidelity(log_likelihood=float(forced.log_probs.sum()),
                              reference_log_likelihood=float(forced_reference.log_probs.sum()),
                              first_token_kl=first_token_kl(reference.first_logits, reduced.first_logits),
                              exact_match=reference.tokens == reduced.tokens)
    traces = stage_traces(loaded, inputs, reduction, stages, prefill, reduced)
    trace = traces.get("llm") or traces.get("cache") or traces["boundary"]
    llm_input = int(prefill.visual.sum())
    counts = {"clip": traces["boundary"].num_input_tokens, "llm_input": llm_input,
              "llm_after_k": reduced.llm_visual_tokens[-1], "text": int(prefill.embeds.shape[1]) - llm_input}
    timings = {"encoder_s": encoded.seconds, "prefill_s": reduced.prefill_seconds, "decode_s": reduced.decode_seconds,
               "reference_prefill_s": reference.prefill_seconds, "reference_decode_s": reference.decode_seconds}
    return VideoAnswer(answer=reduced.text, reference_answer=reference.text, trace=trace, stages=traces,
                       fidelity=fidelity, timings=timings, token_counts=counts, video=inputs.video, reduction=stages)
