"""What a Banzhaf game reads from each coalition's forward: the model's target.

* classifiers: the logit of the predicted class (of the merged run) or a chosen class;
* image embedding models (DINOv2, ViTModel): cosine similarity of the CLS embedding
  (pooler output) to the unmerged model's;
* text encoders (MiniLM, BERT): cosine similarity of the size-weighted mean over the
  *present* tokens to the unmerged mean over all tokens;
* CLIP: cosine similarity of the image embedding to a prompt's text embedding (or to the
  unmerged image embedding when no prompt is given).

Reference embeddings (unmerged runs, prompts) are computed once per inspected input.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch

from tomviz.merge.engine import MergeConfig, MergeState
from tomviz.models.loading import LoadedModel, PreparedInput
from tomviz.trace import Trace

Forward = Callable[[MergeConfig], tuple[Any, MergeState]]  # config → (outputs, state)


class Inspected(Protocol):
    """One traced forward to score (``tomviz.inspect(..., keep_hidden=True)`` returns one)."""

    trace: Trace
    outputs: Any
    model: LoadedModel
    inputs: PreparedInput
    config: MergeConfig
    state: MergeState


@dataclass(frozen=True)
class Target:
    """What a game reads from a forward."""

    read: Callable[[Any, MergeState], torch.Tensor]  # (outputs, state) → [M], one value per coalition
    description: str  # what is measured, in words
    reads_all: bool  # reads every token (a mean) rather than the CLS token only


def forward_of(result: Inspected) -> Forward:
    """The forward a game runs: the model's own, or CLIP's image tower alone (projected embeddings)."""
    if result.model.clip_text:
        return clip_image_forward(result)
    return lambda config: result.model.run(result.inputs, config)


def clip_image_forward(result: Inspected) -> Forward:
    """CLIPModel: only the image tower, ``get_image_features`` → projected embeddings ``[M, D]``."""
    loaded = result.model
    features = lambda pixel_values, **_: pooled(loaded.model.get_image_features(pixel_values=pixel_values))  # noqa: E731
    return lambda config: loaded.run(result.inputs, config, forward=features)


def pooled(out: Any) -> torch.Tensor:
    """``get_*_features`` return a tensor in older transformers, an output with ``pooler_output`` in 5.x."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# reference (unmerged) embeddings per inspected input, dropped with the input's MergeState
_REFERENCE_CACHE: "weakref.WeakKeyDictionary[MergeState, dict[str, torch.Tensor]]" = weakref.WeakKeyDictionary()


def _reference(result: Inspected, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` once per inspected input (repeated scores of one input reuse it)."""
    cache = _REFERENCE_CACHE.setdefault(result.state, {})
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _cls_embedding(outputs: Any) -> torch.Tensor:
    pooled = getattr(outputs, "pooler_output", None)
    return pooled if pooled is not None else outputs.last_hidden_state[:, 0]


def _mean_embedding(outputs: Any, state: MergeState) -> torch.Tensor:
    """Size-weighted mean of the present tokens: ``[M, N, C]`` → ``[M, C]``."""
    hidden = outputs.last_hidden_state  # [M, N, C]
    weight = state.token_weights(hidden)  # [M, N, 1]
    return (hidden * weight).sum(1) / weight.sum(1).clamp_min(1e-12)


_cos = torch.nn.functional.cosine_similarity


def target_of(result: Inspected, target: Any = None) -> Target:
    """The target for ``result``'s model: ``None`` (its default), a class index or label (classifiers),
    or a prompt (CLIP). ValueError for a target the model cannot read."""
    if result.model.clip_text:
        return _clip_target(result, target)
    if getattr(result.outputs, "logits", None) is not None:
        return _class_target(result, target)
    if target is not None:
        raise ValueError(f"{result.model.name} has no classes or text tower: the target is fixed (got {target!r})")
    return _embedding_target(result)


def _clip_target(result: Inspected, target: Any) -> Target:
    if target is None:
        ref = _reference(result, "clip-image", lambda: clip_image_forward(result)(MergeConfig.unmerged(result.config))[0])  # [1, D]
        return Target(lambda emb, state: _cos(emb, ref), "cosine to the unmerged CLIP image embedding", False)
    if not isinstance(target, str) or not target.strip():
        raise ValueError("the CLIP target is a prompt: give a non-empty string")
    text = _reference(result, f"text:{target}", lambda: text_embedding(result.model, target))  # [1, D]
    return Target(lambda emb, state: _cos(emb, text), f"CLIP image–text cosine similarity to {target!r}", False)


def _class_target(result: Inspected, target: Any) -> Target:
    logits = result.outputs.logits
    labels = result.model.labels or {}
    if target is None:
        cls = int(logits[0].argmax())
    elif isinstance(target, str):
        by_name = {v: k for k, v in labels.items()}
        if target not in by_name:
            raise ValueError(f"unknown class {target!r}: the model's labels are e.g. {list(by_name)[:5]}")
        cls = by_name[target]
    elif isinstance(target, (int, np.integer)) and 0 <= int(target) < logits.shape[-1]:
        cls = int(target)
    else:
        raise ValueError(f"target must be a class index in [0, {logits.shape[-1]}) or a label, got {target!r}")
    name = labels.get(cls, str(cls))
    default = " (the merged prediction)" if target is None else ""
    return Target(lambda out, state: out.logits[:, cls], f"logit of class {cls} '{name}'{default}", False)


def _embedding_target(result: Inspected) -> Target:
    def unmerged(pool: Callable[..., torch.Tensor]) -> torch.Tensor:
        out, state = result.model.run(result.inputs, MergeConfig.unmerged(result.config))
        return pool(out, state)

    if result.model.modality == "text":
        ref = _reference(result, "mean", lambda: unmerged(_mean_embedding))  # [1, C]
        return Target(lambda out, state: _cos(_mean_embedding(out, state), ref),
                      "cosine of the mean over present tokens to the unmerged mean embedding", True)
    ref = _reference(result, "cls", lambda: unmerged(lambda out, state: _cls_embedding(out)))  # [1, C]
    return Target(lambda out, state: _cos(_cls_embedding(out), ref), "cosine of the CLS embedding to the unmerged one", False)


def text_embedding(loaded: Any, text: str) -> torch.Tensor:
    """CLIP's projected text embedding ``[1, D]`` of ``text`` (the text tower never merges)."""
    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.name} has no tokenizer for its text tower")
    enc = loaded.tokenizer(text, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        out = loaded.model.get_text_features(
            input_ids=enc["input_ids"].to(loaded.device), attention_mask=enc["attention_mask"].to(loaded.device)
        )
    return pooled(out)
