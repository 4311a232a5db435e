"""What the app computes for one input: its service layer, without gradio (testable on its own).

:func:`analyse` runs the model once with tracing, reuses (or makes) the unmerged
reference for the same input, measures speed and fidelity, and returns an
:class:`Analysis`: small, CPU-only, deep-copyable, kept per session in ``gr.State``.
Changing the layer only re-renders from ``Analysis.trace``; it never runs a model.
"""
from __future__ import annotations

import hashlib
import time
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

import tomviz
from tomviz.fidelity import EmbeddingFidelity, cosine, final_embedding, top_labels
from tomviz.merge.engine import MergeConfig
from tomviz.merge.request import MergeRequest
from tomviz.models.hub import DEFAULT_MODEL
from tomviz.render.overlay import display_image
from tomviz.speed import SpeedReport, measure_latencies, timed_run, trace_gflops
from tomviz.trace import Trace

# Speed is measured a little at every setting and accumulated per input, so a ratio change costs
# no extra merged forward (the traced one is timed) and an unmerged one now and then, not a full benchmark.
FIRST_RUNS = 2  # unmerged timings when an input is first seen
SAMPLE_WINDOW = 5  # timings kept per configuration (median of these is shown)
BASELINE_REFRESH_S = 20.0  # add an unmerged timing when the newest is older than this (tracks load); at 5 s
# a visitor moving the ratio every ~2 s paid a whole unmerged forward on every 2nd-3rd change (BENCHMARKS.md)
DISPLAY_SIDE = 448  # the photo kept in the session is at most this long on a side

try:  # ZeroGPU on Spaces: the GPU function carries @spaces.GPU; elsewhere a no-op
    import spaces  # type: ignore[import-not-found]

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - depends on the platform

    def gpu(fn=None, **_kwargs):  # type: ignore[no-redef]
        return fn if fn is not None else (lambda f: f)


@dataclass
class Settings:
    """The model and the merge settings a user picked (the merge part is a :class:`MergeRequest`)."""

    model: str = DEFAULT_MODEL["image"]
    method: str = "tome"
    ratio: float = 0.5  # fraction of the input tokens removed by the last layer
    schedule: str = "constant"  # "constant" | "decreasing"
    prop_attn: bool = True

    @property
    def request(self) -> MergeRequest:
        return MergeRequest(method=self.method, ratio=self.ratio, schedule=self.schedule, prop_attn=self.prop_attn)

    def check(self) -> None:
        """Raise ValueError with a readable message for settings out of range."""
        self.request.check()

    def config(self, trace: bool, extra: dict[str, Any] | None = None) -> MergeConfig:
        return self.request.config(trace=trace, extra=extra)


def check_modality(name: str, loaded: Any, modality: str, remedy: str) -> None:
    """ValueError ("<name> is a text model: <remedy>") when ``loaded`` does not take ``modality`` inputs."""
    if loaded.modality != modality:
        raise ValueError(f"{name} is {'a text' if loaded.modality == 'text' else 'an image'} model: {remedy}")


@dataclass
class Reference:
    """The unmerged (r=0) run of one input and the timings gathered for it, reused while only
    the merge settings change."""

    key: str  # model + device + input hash
    embedding: np.ndarray  # [C] final embedding (see final_embedding)
    embedding_name: str
    top_labels: list[tuple[str, float]] | None  # classifier models: top-k (label, probability)
    unmerged_samples: list[float]  # recent unmerged timings (seconds), newest last
    unmerged_measured_at: float = 0.0  # time.monotonic() of the newest unmerged timing
    merged_samples: dict[str, list[float]] = field(default_factory=dict)  # settings key → recent timings

    def add(self, samples: list[float], new: list[float]) -> list[float]:
        return (samples + new)[-SAMPLE_WINDOW:]


@dataclass
class Analysis:
    """Everything the app shows for one input and one setting (CPU, deep-copyable)."""

    trace: Trace
    settings: Settings
    reference: Reference
    fidelity: EmbeddingFidelity
    speed: SpeedReport
    image: Image.Image | None = None  # the photo, at most DISPLAY_SIDE per side (image models)
    notes: list[str] = field(default_factory=list)  # things the user should be told (truncation, ...)

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest (what the API endpoints return besides the pictures)."""
        meta = self.trace.meta
        return {
            "model": meta.get("model"), "method": meta.get("method"), "ratio": self.settings.ratio,
            "schedule": self.settings.schedule, "prop_attn": self.settings.prop_attn,
            "removed_per_layer": meta.get("schedule"), "token_counts": self.trace.token_counts(),
            "num_layers": self.trace.num_layers, "fidelity": self.fidelity.to_dict(), "speed": self.speed.to_dict(),
            "notes": self.notes,
        }


def input_key(loaded: Any, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha1(f"{loaded.name}|{loaded.device}".encode())
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def make_reference(loaded: Any, inputs: Any, key: str) -> Reference:
    """Run the unmerged model (r=0): embedding, top labels and first timings."""
    config = MergeConfig.unmerged()
    outputs, _, seconds = timed_run(loaded, inputs, config)
    samples = [seconds] + measure_latencies(loaded, inputs, config, runs=FIRST_RUNS - 1)
    embedding, name = final_embedding(outputs, loaded.adapter)
    return Reference(key=key, embedding=embedding, embedding_name=name, top_labels=top_labels(outputs, loaded.labels),
                     unmerged_samples=samples, unmerged_measured_at=time.monotonic())


@gpu
def analyse(x: Any, settings: Settings, reference: Reference | None = None, modality: str | None = None) -> Analysis:
    """Load (cached) the model, prepare ``x`` (image or text), run it traced under ``settings``.

    Raises ``tomviz.ModelLoadError``, ``ImageInputError`` / ``ValueError`` (bad input or
    settings) with messages meant for users. ``reference`` is reused when it belongs to the
    same model and input. ``modality`` ("image"/"text"): refuse a model of the other kind.
    """
    settings.check()
    loaded = tomviz.load(settings.model, untrusted=True)  # a name typed on the web
    if modality is not None:
        check_modality(settings.model, loaded, modality, f"use it in the {loaded.modality.capitalize()} tab")
    inputs = loaded.prepare(x)
    key = input_key(loaded, inputs.tensors)
    if reference is None or reference.key != key:
        reference = make_reference(loaded, inputs, key)
    else:
        reference = deepcopy(reference)  # never mutate what the previous state holds
        if time.monotonic() - reference.unmerged_measured_at > BASELINE_REFRESH_S:  # follow the machine's load
            fresh = measure_latencies(loaded, inputs, MergeConfig.unmerged(), runs=1)
            reference.unmerged_samples = reference.add(reference.unmerged_samples, fresh)
            reference.unmerged_measured_at = time.monotonic()
    # The traced forward is also the merged timing sample: tracing costs 0-8 % (BENCHMARKS.md), so the
    # speed-up shown is, if anything, a slight underestimate; it saves a second forward per ratio change.
    outputs, state, seconds = timed_run(loaded, inputs, settings.config(trace=True, extra=inputs.method_extra()))
    trace = state.trace()
    speed_key = repr((settings.method, settings.ratio, settings.schedule, settings.prop_attn))
    merged_samples = reference.add(reference.merged_samples.get(speed_key, []), [seconds])
    reference.merged_samples[speed_key] = merged_samples

    embedding, _ = final_embedding(outputs, loaded.adapter, trace.sizes(trace.num_layers - 1))
    merged_top = top_labels(outputs, loaded.labels)
    fidelity = EmbeddingFidelity(embedding=reference.embedding_name, cosine=cosine(embedding, reference.embedding),
                                 top_merged=merged_top, top_unmerged=None if merged_top is None else reference.top_labels)

    hidden, mlp = loaded.widths
    merged_gflops, unmerged_gflops = trace_gflops(trace, hidden, mlp)
    speed = SpeedReport(
        merged_s=float(np.median(merged_samples)), unmerged_s=float(np.median(reference.unmerged_samples)),
        merged_gflops=merged_gflops, unmerged_gflops=unmerged_gflops, runs=len(merged_samples),
        baseline_runs=len(reference.unmerged_samples), device=str(loaded.device),
    )
    notes = []
    if inputs.meta.get("truncated"):
        notes.append(f"The prompt has {inputs.meta['num_tokens_before_truncation']} tokens; it was truncated to the "
                     f"model's maximum of {inputs.meta['max_length']}.")
    image = display_image(inputs.image, DISPLAY_SIDE) if inputs.image is not None else None
    return Analysis(trace=trace, settings=settings, reference=reference, fidelity=fidelity, speed=speed,
                    image=image, notes=notes)
