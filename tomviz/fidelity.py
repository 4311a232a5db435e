"""Fidelity: how close a merged forward stays to the unmerged one.

One definition, used by the app, the sweep, the bench and the CLI: the cosine similarity of
the final embedding, and for classifiers the top-k labels (top-1 agreement).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tomviz.models.adapter import EMBEDDINGS, Adapter

TOP_K = 5


def final_embeddings(
    outputs: Any, family: Adapter | str, weights: torch.Tensor | np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """``[B, C]`` embeddings that fidelity is measured on (one per batch element), and their name, as the
    model's family says (:meth:`tomviz.models.adapter.Adapter.final_embeddings`; ``family`` may also be a
    modality, ``"image"`` or ``"text"``, for its default).

    Classifiers: the logits. Text models: the weighted mean of the final tokens (= the mean
    over input tokens, as sentence encoders pool); ``weights`` ``[B, N_L]`` are the final
    tokens' sizes from the merge state (None = all ones; see :func:`final_weights_of`).
    Image models: ``image_embeds`` (CLIP), else ``pooler_output``, else the CLS token of
    ``last_hidden_state``.
    """
    if isinstance(family, Adapter):
        return family.final_embeddings(outputs, weights)
    return EMBEDDINGS[family](outputs, weights)


def final_embedding(
    outputs: Any, family: Adapter | str, final_sizes: torch.Tensor | np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """``[C]`` embedding of batch element 0 (see :func:`final_embeddings`); ``final_sizes`` ``[N_L]``."""
    embeddings, name = final_embeddings(outputs, family, final_sizes)
    return embeddings[0], name


def final_sizes_of(state: Any) -> torch.Tensor | None:
    """``[N_L]`` sizes of batch element 0's final tokens from a merge state (None if nothing merged)."""
    sizes = getattr(state, "sizes", None)
    return None if sizes is None else sizes[0, :, 0]


def final_weights_of(state: Any) -> torch.Tensor | None:
    """``[B, N_L]``: how many input tokens each final token stands for (size; 0 for padding), or None
    when nothing merged and nothing is padded."""
    sizes, valid = getattr(state, "sizes", None), getattr(state, "valid", None)
    if sizes is None and valid is None:
        return None
    weights = torch.ones(valid.shape) if sizes is None else sizes[..., 0].float().cpu()
    return weights if valid is None else weights * valid.float().cpu()


@dataclass
class Agreement:
    """Fidelity of one batch element's merged embedding to its unmerged one."""

    cosine: float
    top1_agree: bool | None = None  # classifiers: the top-1 class is unchanged
    top5_overlap: float | None = None  # classifiers: |top-5 merged ∩ top-5 unmerged| / 5
    top1: int | None = None  # classifiers: the merged top-1 class id


def agreements(merged: np.ndarray, base: np.ndarray, classifier: bool, k: int = TOP_K) -> list[Agreement]:
    """Per batch element, the fidelity of ``merged`` ``[B, C]`` to ``base`` ``[B, C]`` (logits when ``classifier``)."""
    out = []
    for m, b in zip(merged, base):
        agreement = Agreement(cosine=cosine(m, b))
        if classifier:
            kk = min(k, m.shape[0])
            top_m, top_b = np.argsort(-m, kind="stable")[:kk], np.argsort(-b, kind="stable")[:kk]
            agreement.top1_agree = bool(top_m[0] == top_b[0])
            agreement.top5_overlap = len(set(top_m.tolist()) & set(top_b.tolist())) / kk
            agreement.top1 = int(top_m[0])
        out.append(agreement)
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / denom) if denom > 0 else float("nan")


def top_labels(outputs: Any, labels: dict[int, str] | None, k: int = TOP_K) -> list[tuple[str, float]] | None:
    """The k most probable ``(label, probability)`` of a classifier's batch element 0, or None."""
    logits = getattr(outputs, "logits", None)
    if logits is None or not labels:
        return None
    probs = torch.softmax(logits[0].float(), dim=-1).cpu()
    values, indices = probs.topk(min(k, probs.shape[0]))
    return [(labels.get(int(i), str(int(i))), float(v)) for v, i in zip(values, indices)]


@dataclass
class EmbeddingFidelity:
    """How close one input's merged run stays to its unmerged one (what the app shows)."""

    embedding: str  # which final embedding was compared (see final_embedding)
    cosine: float  # of the merged final embedding to the unmerged one
    top_merged: list[tuple[str, float]] | None = None  # classifiers: the top-k (label, probability), merged
    top_unmerged: list[tuple[str, float]] | None = None  # ... and unmerged

    @property
    def top1_kept(self) -> bool | None:
        """Classifiers: whether the merged run's top-1 label is the unmerged run's (None without classes)."""
        if not self.top_merged or not self.top_unmerged:
            return None
        return self.top_merged[0][0] == self.top_unmerged[0][0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; the top-k lists only for classifiers."""
        out: dict[str, Any] = {"embedding": self.embedding, "cosine": self.cosine}
        if self.top_merged is not None:
            out["top_merged"], out["top_unmerged"] = self.top_merged, self.top_unmerged
        return out
