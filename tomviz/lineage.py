"""Lineage of one group: which merges built it, when each member joined and with what similarity.

Read from a :class:`~tomviz.trace.Trace` alone (no model): ``layers[l].edges_*`` name the merges layer
``l`` made as indices into the tokens entering it, and ``groups_entering(l)`` says which input tokens each
of those tokens holds. Layers are 0-based here; the pictures and panels show them 1-based.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tomviz.trace import Trace


@dataclass(frozen=True)
class MergeEvent:
    """One recorded merge inside the group's history: the token holding ``merged`` (input token indices)
    merged into the token holding ``into`` in ``layer`` (0-based), chosen with ``similarity``."""

    layer: int
    merged: tuple[int, ...]
    into: tuple[int, ...]
    similarity: float


@dataclass
class Lineage:
    """The group holding input token ``token`` after ``layer`` (0-based).

    ``members``: its input tokens, ascending. ``joined[i]``: the layer (0-based) in which member
    ``members[i]`` first stopped being alone, -1 if never; ``similarity[i]``: the similarity of that
    merge (nan when the method recorded no edge for it). ``reached[i]``: the layer in which member ``i``
    came into the same group as ``token`` (-1 for ``token`` itself); ``reached_similarity[i]``: the
    similarity of the merge that brought it (nan if none recorded). ``events``: the recorded merges that
    built the group, in layer order. ``pruned_at``: the layer that pruned ``token`` (then the group is empty).
    """

    token: int
    layer: int
    members: np.ndarray  # [n] int, input token indices
    joined: np.ndarray  # [n] int, 0-based layer, -1 = still alone
    similarity: np.ndarray  # [n] float, nan = no recorded edge
    reached: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [n] 0-based layer
    reached_similarity: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [n]
    events: list[MergeEvent] = field(default_factory=list)
    pruned_at: int | None = None

    @property
    def size(self) -> int:
        return int(self.members.shape[0])


def group_members(trace: Trace, token: int, layer: int) -> np.ndarray:
    """``[n]`` input tokens in the same group as ``token`` after ``layer`` (0-based); empty if pruned."""
    groups = trace.groups(layer)  # [N0]
    if groups[token] < 0:
        return np.zeros(0, dtype=np.int64)
    return np.nonzero(groups == groups[token])[0]


def group_lineage(trace: Trace, token: int, layer: int | None = None) -> Lineage:
    """The lineage of ``token``'s group after ``layer`` (default: the last layer).

    Raises IndexError for a token or layer outside the trace.
    """
    layer = trace.num_layers - 1 if layer is None else int(layer)
    trace.groups(layer)  # IndexError for a bad layer
    if not 0 <= int(token) < trace.num_input_tokens:
        raise IndexError(f"token {token} out of range: the input has {trace.num_input_tokens} tokens")
    token = int(token)
    pruned_at = next((l for l in range(layer + 1) if trace.groups(l)[token] < 0), None)
    members = group_members(trace, token, layer)
    in_group = np.zeros(trace.num_input_tokens, dtype=bool)
    in_group[members] = True
    joined = np.full(trace.num_input_tokens, -1, dtype=np.int64)  # indexed by input token
    similarity = np.full(trace.num_input_tokens, np.nan)
    events: list[MergeEvent] = []
    for l in range(layer + 1):
        entering = trace.groups_entering(l)  # [N0] token index entering layer l
        lt = trace.layers[l]
        for src, dst, score in zip(lt.edges_src.tolist(), lt.edges_dst.tolist(), lt.edges_score.tolist()):
            merged = np.nonzero(entering == src)[0]
            into = np.nonzero(entering == dst)[0]
            if not (in_group[merged].any() or in_group[into].any()):
                continue
            events.append(MergeEvent(l, tuple(merged.tolist()), tuple(into.tolist()), float(score)))
            for side in (merged, into):
                fresh = side[joined[side] < 0]
                joined[fresh], similarity[fresh] = l, score
    # members that merged without a recorded edge (e.g. a method that fuses tokens without pairs)
    first = trace.joined_at(layer)
    unrecorded = (joined < 0) & (first >= 0)
    joined[unrecorded] = first[unrecorded]
    reached = np.full(members.shape[0], -1, dtype=np.int64)
    reached_similarity = np.full(members.shape[0], np.nan)
    for i, member in enumerate(members.tolist()):
        if member == token:
            continue
        l = next(l for l in range(layer + 1) if trace.groups(l)[member] == trace.groups(l)[token])
        reached[i] = l
        # the merge in layer l that moved the member's token; prefer the one whose other side holds ``token``
        moves = [e for e in events if e.layer == l and (member in e.merged or member in e.into)]
        direct = [e for e in moves if token in (e.into if member in e.merged else e.merged)]
        if direct or moves:
            reached_similarity[i] = (direct or moves)[0].similarity
    return Lineage(token=token, layer=layer, members=members, joined=joined[members], similarity=similarity[members],
                   reached=reached, reached_similarity=reached_similarity, events=events, pruned_at=pruned_at)
