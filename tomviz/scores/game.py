"""The model game: the groups after one layer are its players.

The value of a coalition S runs the layers after ``layer`` with only S's tokens
present (plus the protected tokens: CLS, distillation, registers), sizes kept,
no further merging (:class:`~tomviz.merge.engine.Resume`), and reads a target
(:mod:`tomviz.scores.targets`). One batched forward evaluates a chunk of coalitions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from tomviz.merge.engine import MergeConfig, MergeState, Resume
from tomviz.scores.targets import Forward, Inspected, forward_of, target_of

TOKENS_PER_CHUNK = 32768  # coalitions per value-function call ≈ this / tokens at the layer (bounds memory)
SUB_BATCH = 64  # coalitions per forward, sorted by size (each forward pads only to its largest coalition)


@dataclass
class ModelGame:
    """A batched value function over the groups after ``layer`` of one inspected input.

    ``__call__(masks [M, n] bool) → [M]`` runs the blocks after ``layer`` once for the M coalitions.
    """

    result: Inspected
    layer: int
    groups: np.ndarray  # [n] group ids at ``layer``: the players
    read: Callable[[Any, MergeState], torch.Tensor]  # (outputs, state) → [M] target
    target: str
    forward: Forward

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        out = np.empty(masks.shape[0], dtype=np.float64)
        for rows, config in resume_batches(self.result, self.layer, self.groups, masks):
            outputs, state = self.forward(config)
            out[rows] = self.read(outputs, state).double().cpu().numpy()
        return out


def resume_batches(
    result: Inspected, layer: int, groups: np.ndarray, masks: np.ndarray
) -> Iterator[tuple[np.ndarray, MergeConfig]]:
    """Forwards for the coalitions ``masks`` ``[M, n]``: (rows of ``masks``, config) per sub-batch.

    Coalitions are sorted by size and cut into sub-batches of ``SUB_BATCH``, so that each
    forward carries only about as many tokens as its largest coalition (see :func:`resume_config`).
    """
    order = np.argsort(masks.sum(1), kind="stable")
    for start in range(0, order.shape[0], SUB_BATCH):
        rows = order[start : start + SUB_BATCH]
        yield rows, resume_config(result, layer, groups, masks[rows])


def resume_config(result: Inspected, layer: int, groups: np.ndarray, masks: np.ndarray) -> MergeConfig:
    """The config that runs the blocks after ``layer`` for the coalitions ``masks`` ``[M, n]`` of ``groups``.

    Each coalition keeps only its present tokens (protected ones included, original order,
    so CLS stays first), padded with masked-out tokens to the largest coalition: ``hidden``
    ``[M, k, C]``, ``sizes`` ``[M, k, 1]``, ``present`` ``[M, k]``. Absent tokens are masked
    out of attention either way, so dropping them changes no value, only the cost.
    """
    hidden, sizes = result.state.hidden[layer]  # [1, N_l, C], [1, N_l, 1] | None
    device = hidden.device
    present = torch.ones(masks.shape[0], hidden.shape[1], dtype=torch.bool, device=device)  # [M, N_l]
    present[:, torch.as_tensor(groups, device=device)] = torch.as_tensor(masks, device=device)
    keep = int(present.sum(1).max())
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :keep]  # [M, k] present first
    resume = Resume(
        layer,
        hidden[0][order],  # [M, k, C]
        None if sizes is None else sizes[0][order],  # [M, k, 1]
        present.gather(1, order),  # [M, k]
    )
    return dataclasses.replace(result.config, trace=False, keep_hidden=False, resume=resume)


def chunk_size(result: Inspected, layer: int) -> int:
    """Coalitions per forward at ``layer`` (about ``TOKENS_PER_CHUNK`` tokens)."""
    return max(1, TOKENS_PER_CHUNK // int(result.state.hidden[layer][0].shape[1]))


def groups_at(result: Inspected, layer: int) -> tuple[int, np.ndarray]:
    """(layer in [0, L), the group ids that play: ``[n]``; protected tokens and padding excluded)."""
    state, trace = result.state, result.trace
    if not state.hidden:
        raise ValueError("Banzhaf scores resume the forward from stored tokens: inspect(..., keep_hidden=True)")
    num_layers = len(state.hidden)
    if not -num_layers <= layer < num_layers:
        raise IndexError(f"layer {layer} out of range: the model has {num_layers} layers (0-based)")
    layer = layer % num_layers
    hidden, _ = state.hidden[layer]
    protected = trace.num_protected
    groups = np.arange(protected, hidden.shape[1])
    valid = state.valid
    if valid is not None and valid.shape[1] == hidden.shape[1]:  # padding never plays
        groups = groups[valid[0, protected:].cpu().numpy()]
    if groups.size == 0:
        raise ValueError(f"no groups to score after layer {layer}: only protected tokens are left")
    return layer, groups


def check_not_last(result: Inspected, layer: int, what: str) -> None:
    """A CLS-read target does not depend on any group after the last layer: refuse loudly."""
    last = len(result.state.hidden) - 1
    if layer == last:
        raise ValueError(
            f"layer {layer} is the last: no block runs after it and the target ({what}) reads only the CLS token, "
            f"so every group's value would be 0; choose a layer ≤ {last - 1}"
        )


def model_game(result: Inspected, layer: int, target: Any = None) -> ModelGame:
    """The game of the groups after ``layer`` of ``result`` (which needs ``keep_hidden=True``)."""
    layer, groups = groups_at(result, layer)
    chosen = target_of(result, target)
    if not chosen.reads_all:
        check_not_last(result, layer, chosen.description)
    return ModelGame(result=result, layer=layer, groups=groups, read=chosen.read, target=chosen.description,
                     forward=forward_of(result))
