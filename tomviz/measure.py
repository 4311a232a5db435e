"""One measured forward and its fidelity to the unmerged one: the metric code that the single-input
sweep (:mod:`tomviz.sweep`) and the benchmark engine (:mod:`tomviz.bench`) share, so they cannot disagree.

:func:`measured_forward` runs a (batched) forward under a merge config, untraced, and keeps what the
metrics need: the final embeddings ``[B, C]`` (:func:`tomviz.fidelity.final_embeddings`), the token
counts, the analytic GFLOPs per input and the wall time. :func:`compare` turns a merged and an unmerged
:class:`Forward` of the same batch into one :class:`SettingMetrics` per batch element.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tomviz.fidelity import Agreement, agreements, final_embeddings, final_weights_of
from tomviz.merge.engine import MergeConfig
from tomviz.models.loading import LoadedModel, PreparedInput
from tomviz.speed import gflops_per_layer, state_token_counts, timed_run


@dataclass
class Forward:
    """What one forward of a batch of B inputs leaves for the metrics."""

    embeddings: np.ndarray  # [B, C] (logits for classifiers)
    classifier: bool  # the model has a classification head (embeddings are logits)
    tokens_in: int  # N0
    tokens_out: list[int]  # [B] tokens each element has after the last layer (padding not counted)
    gflops: float  # analytic GFLOPs of the transformer layers, per input (tomviz.speed)
    seconds: float  # wall time of the whole batch forward


@dataclass
class SettingMetrics:
    """One input under one merge setting, against the same input unmerged."""

    agreement: Agreement  # cosine; top-1 agreement, top-5 overlap and merged top-1 for classifiers
    tokens_in: int
    tokens_out: int
    gflops: float
    base_gflops: float


def measured_forward(loaded: LoadedModel, inputs: PreparedInput, config: MergeConfig) -> Forward:
    """One untraced forward of ``inputs`` (a batch) under ``config``, timed."""
    outputs, state, seconds = timed_run(loaded, inputs, replace(config, trace=False))
    embeddings, _ = final_embeddings(outputs, loaded.adapter, final_weights_of(state))
    counts = state_token_counts(state)  # [N0, N_0, ..., N_{L-1}] carried by the batch tensor
    batch = embeddings.shape[0]
    if state.valid is not None:  # padding or an adaptive method's absent tokens
        tokens_out = [int(v) for v in state.valid.sum(1).tolist()]
    else:
        tokens_out = [counts[-1]] * batch
    hidden, mlp = loaded.widths
    gflops = float(sum(gflops_per_layer(counts[:-1], counts[1:], hidden, mlp)))
    return Forward(embeddings=embeddings, classifier=getattr(outputs, "logits", None) is not None,
                   tokens_in=counts[0], tokens_out=tokens_out, gflops=gflops, seconds=seconds)


def compare(merged: Forward, base: Forward) -> list[SettingMetrics]:
    """Per batch element: fidelity of ``merged`` to ``base`` (the same batch unmerged), tokens and GFLOPs."""
    found = agreements(merged.embeddings, base.embeddings, classifier=merged.classifier)
    return [SettingMetrics(agreement=a, tokens_in=merged.tokens_in, tokens_out=n, gflops=merged.gflops, base_gflops=base.gflops)
            for a, n in zip(found, merged.tokens_out)]
