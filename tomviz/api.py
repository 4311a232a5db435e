"""The public API: ``load``, ``inspect``, ``patch``, ``unpatch``."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from tomviz.merge.engine import MergeConfig, MergeState
from tomviz.merge.request import MergeRequest
from tomviz.models import patching
from tomviz.models.loading import LoadedModel, PreparedInput, load
from tomviz.models.vlm import LoadedVLM
from tomviz.scores.banzhaf import BanzhafResult, banzhaf
from tomviz.trace import Trace
from tomviz.video import VideoResult, inspect_video, is_video_input
from tomviz.vlm import VideoAnswer, VLMResult, ask_video, inspect_vlm


@dataclass
class InspectResult:
    """One traced forward pass."""

    trace: Trace
    outputs: Any  # the model's own output object (last_hidden_state; logits when it has a head)
    model: LoadedModel
    inputs: PreparedInput
    config: MergeConfig
    state: MergeState  # final sizes/valid of the last layer; per-block hidden states when config.keep_hidden

    def banzhaf(self, layer: int, samples: int = 512, exact: bool = False, seed: int = 0, target: Any = None) -> BanzhafResult:
        """Banzhaf values and interactions of the groups after ``layer``.

        Returns a :class:`~tomviz.scores.banzhaf.BanzhafResult`: ``.values [n]``, ``.stderr [n]``,
        ``.interactions [n, n]``, ``.groups`` (group ids), ``.target``; ``.to_tokens()`` /
        ``.to_grid()`` map the values back to input tokens / patches. See :func:`tomviz.scores.banzhaf.banzhaf`.
        """
        result = self
        if not self.state.hidden:  # not inspected with keep_hidden=True: run the same forward once more, keeping them
            config = replace(self.config, keep_hidden=True)
            outputs, state = self.model.run(self.inputs, config)
            result = replace(self, outputs=outputs, state=state, config=config)
        return banzhaf(result, layer, samples=samples, exact=exact, seed=seed, target=target)


def run(
    model: LoadedModel,
    inputs: PreparedInput,
    config: MergeConfig,
    **model_kwargs: Any,
) -> tuple[Any, MergeState]:
    """One forward pass of a loaded model under ``config``; returns (outputs, state). See :meth:`LoadedModel.run`."""
    return model.run(inputs, config, **model_kwargs)


def inspect(
    model: str | nn.Module | LoadedModel,
    x: Any,
    ratio: float | None = None,
    r: int | tuple[int, int] | list[int] | None = None,
    method: str = "tome",
    prop_attn: bool = True,
    schedule: str = "constant",
    cls_attention_heads: bool = False,
    full_attention: bool = False,
    keep_hidden: bool = False,
    method_options: dict[str, Any] | None = None,
    mode: str | None = None,
    **vlm_options: Any,
) -> "InspectResult | VLMResult | VideoResult | VideoAnswer":
    """Run ``model`` on ``x`` with token merging and record everything in a :class:`Trace`.

    model: a name for :func:`tomviz.load`, a transformers model instance, or a loaded model.
    x: a PIL image (or path/bytes/array), a string, or ready tensors
       (``pixel_values [B, 3, H, W]`` / ``input_ids [B, N]`` or a dict of them).
    ratio: fraction of the input tokens removed by the last layer (0..``MAX_RATIO``), spread by ``schedule`` ("constant" | "decreasing"; ``mode=`` is its old name, deprecated).
    r: instead, tokens removed per layer: an int, ``(r, -1)`` (decreasing) or a per-layer list; 0 = no merging.
    keep_hidden: keep every block's output tokens (needed to resume a forward, e.g. for Banzhaf scores).
    The trace records batch element 0.

    A vision-language model takes ``x = (image, question)`` and ``place="encoder"|"boundary"|"llm"``
    (plus ``max_new_tokens``, ``fastv_layer``, ...: see :func:`tomviz.vlm.inspect_vlm`); it returns a
    :class:`tomviz.vlm.VLMResult` (``.answer``, ``.reference_answer``, ``.trace``, ``.stages``, ``.fidelity``).
    With ``x = (clip, question)`` (LLaVA-OneVision, SmolVLM2) a temporal method runs at ``place="boundary"``, or
    ``method="fastv"|"holitom"|"dycoke"`` at ``place="llm"`` (plus ``layer``, ``num_frames``, ``stages``: see
    :func:`tomviz.vlm.ask_video`); it returns a :class:`tomviz.vlm.VideoAnswer`, every stage's trace frame-major.

    A clip (a video file, a folder or list of frames, a ``[T, H, W, 3]`` array) with an image model runs a
    temporal method (``method="holitom"|"fastvid"|"dycoke"|"framefusion"|"rlt"|"frame_drop"|"tome"|"random"``,
    options in ``method_options``; plus ``num_frames``, ``feature_layer``, ``limits``: see
    :func:`tomviz.video.inspect_video`); it returns a :class:`tomviz.video.VideoResult` whose trace maps every
    input token, frame-major ``(frame, row, col)``, to its group.
    """
    request = MergeRequest.from_kwargs("inspect", method, ratio, r, schedule, prop_attn, method_options, mode)
    loaded = load(model) if not isinstance(model, (LoadedModel, LoadedVLM)) else model
    if isinstance(loaded, LoadedVLM):
        if not (isinstance(x, tuple) and len(x) == 2):
            raise ValueError(f"{loaded.name} is a vision-language model: give it (image, question)")
        if is_video_input(x[0]):  # (clip, question): LLaVA-OneVision / SmolVLM2 on the frames
            return ask_video(loaded, x[0], x[1], method=method, ratio=ratio or 0.0,
                             method_options=request.method_options, **vlm_options)
        return inspect_vlm(loaded, x[0], x[1], ratio=ratio or 0.0, method=method, prop_attn=prop_attn,
                           schedule=request.schedule, method_options=request.method_options, **vlm_options)
    if loaded.modality == "image" and is_video_input(x):
        if r not in (None, 0):
            raise ValueError("a clip takes ratio= (the fraction of its tokens removed), not r=")
        return inspect_video(loaded, x, method=method, ratio=ratio or 0.0, method_options=request.method_options,
                             **vlm_options)
    if vlm_options:
        raise TypeError(f"unexpected arguments for {loaded.name}: {', '.join(vlm_options)}")
    inputs = loaded.prepare(x)
    config = request.config(trace=True, extra=inputs.method_extra(), cls_attention_heads=cls_attention_heads,
                            full_attention=full_attention, keep_hidden=keep_hidden)
    outputs, state = loaded.run(inputs, config)
    return InspectResult(trace=state.trace(), outputs=outputs, model=loaded, inputs=inputs, config=config, state=state)


def patch(
    model: nn.Module | LoadedModel,
    r: int | tuple[int, int] | list[int] | None = None,
    ratio: float | None = None,
    method: str = "tome",
    prop_attn: bool = True,
    schedule: str = "constant",
    method_options: dict[str, Any] | None = None,
    mode: str | None = None,
) -> nn.Module:
    """Make every later call of ``model`` merge tokens (no tracing, for speed). Returns the transformers model.

    This sets a default on the model object itself: do not use it on a model shared
    between users with different settings (``inspect`` passes its settings per call).
    """
    module = model.model if isinstance(model, LoadedModel) else model
    patching.apply(module)
    request = MergeRequest.from_kwargs("patch", method, ratio, r, schedule, prop_attn, method_options, mode)
    patching.set_default_config(module, request.config())
    return module


def unpatch(model: nn.Module | LoadedModel) -> nn.Module:
    """Restore the model's original forwards."""
    module = model.model if isinstance(model, LoadedModel) else model
    return patching.remove(module)
