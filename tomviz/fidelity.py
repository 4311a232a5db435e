"""Fidelity: how close a merged forward stays to the unmerged one.

One definition, used by the app, the sweep and the CLI: the cosine similarity of
the final embedding, and for classifiers the top-k labels (top-1 agreement).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

TOP_K = 5


def final_embedding(outputs: Any, modality: str, final_sizes: torch.Tensor | np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """``[C]`` embedding of batch element 0 that fidelity is measured on, and its name.

    Classifiers: the logits. Text models: the size-weighted mean of the final tokens
    (= the mean over input tokens, as sentence encoders pool); ``final_sizes`` ``[N_L]``
    comes from the merge state (None = all ones). Image models: ``image_embeds`` (CLIP),
    else ``pooler_output``, else the CLS token of ``last_hidden_state``.
    """
    logits = getattr(outputs, "logits", None)
    if logits is not None:
        return logits[0].float().cpu().numpy(), "logits"
    if modality == "text":
        hidden = outputs.last_hidden_state[0].float().cpu().numpy()  # [N_L, C]
        if final_sizes is None:
            weights = np.ones(hidden.shape[0])
        else:
            weights = np.asarray(torch.as_tensor(final_sizes).reshape(-1).float().cpu().numpy(), dtype=np.float64)
        return (weights[:, None] * hidden).sum(0) / weights.sum(), "mean-pooled tokens"
    for name in ("image_embeds", "pooler_output"):
        value = getattr(outputs, name, None)
        if value is not None:
            return value[0].float().cpu().numpy(), name.replace("_", " ")
    return outputs.last_hidden_state[0, 0].float().cpu().numpy(), "CLS token"


def final_sizes_of(state: Any) -> torch.Tensor | None:
    """``[N_L]`` sizes of batch element 0's final tokens from a merge state (None if nothing merged)."""
    sizes = getattr(state, "sizes", None)
    return None if sizes is None else sizes[0, :, 0]


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
