"""Subword merging for text (Saad et al., arXiv:2507.14423, 2025, its averaging strategy): the hidden states
of the sub-tokens that form one word are averaged into one token.

The word structure comes from the tokenizer (``extra['word_ids']``: the word index
of every input token, -1 for special tokens). At a merging layer, every word of
several pieces becomes one token (size-weighted mean; the group sits at its first
piece's place). Words are taken left to right until ``r`` tokens are gone; the last
word taken may be merged only in part (its first pieces). So the method removes
``min(r, pieces - words)`` tokens: fewer than the schedule asks when the text has
few split words, and nothing at all once every word is whole — a trace of
``subword`` does not follow the schedule. ``layer=`` restricts merging to one layer
(the definition's "chosen layer"); by default every layer the schedule asks to
merge does so until no word is split.

The current tokens' words come from ``MergeInputs.positions`` (tracked by the engine).
A batch shares one input's word ids (``extra`` describes one input).

No original code: the study defines the operation (average the sub-tokens of a word at a chosen layer) but
ships no implementation to reproduce, so this is tomviz's own adaptation (the app's label says so).
"""
from __future__ import annotations

import torch

from tomviz.merge.base import MergeInputs, MergeMethod
from tomviz.merge.plan import MergePlan
from tomviz.merge.selection import plan_from_assignment


def word_merge_targets(word_ids: torch.Tensor, r: int) -> torch.Tensor:
    """Which token each token merges into.

    word_ids: ``[N]`` long, the word of each current token (-1 = special, never merges).
    Returns ``[N]`` long: the index of the word's first piece for a merged piece, the
    token's own index otherwise; at most ``r`` tokens merge, words left to right.
    """
    num_tokens = word_ids.shape[0]
    index = torch.arange(num_tokens, device=word_ids.device)
    same_as_previous = torch.zeros(num_tokens, dtype=torch.bool, device=word_ids.device)
    same_as_previous[1:] = (word_ids[1:] == word_ids[:-1]) & (word_ids[1:] >= 0)
    starts = torch.where(same_as_previous, 0, index)
    first_piece = starts.cummax(0).values  # [N] index of the first piece of each token's run
    merges = same_as_previous & (same_as_previous.long().cumsum(0) <= r)  # the first r pieces to merge
    return torch.where(merges, first_piece, index)


class Subword(MergeMethod):
    """Merge the pieces of each word (text models only)."""

    name = "subword"
    label = "Subword (tomviz's own: merge the pieces of each word; no authors' code to follow)"
    needs_positions = True
    modalities = ("text",)

    def __init__(self, layer: int | None = None):
        self.layer = layer  # merge only at this layer (0-based); None = wherever the schedule merges

    def plan(self, inputs: MergeInputs, r: int) -> MergePlan:
        word_ids = inputs.extra.get("word_ids")
        if word_ids is None:
            raise ValueError("subword merges the pieces of words: it needs a text input (extra['word_ids'])")
        batch, num_tokens, _ = inputs.metric.shape
        device = inputs.metric.device
        positions = inputs.positions
        if positions is None:
            if num_tokens != len(word_ids):
                raise ValueError("subword needs the input position of each token (MergeInputs.positions)")
            positions = torch.arange(num_tokens, device=device).expand(batch, num_tokens)  # the input itself
        if r <= 0 or (self.layer is not None and inputs.layer != self.layer):
            plan = MergePlan.identity(batch, num_tokens, device)
        else:
            words = torch.as_tensor(word_ids, dtype=torch.long, device=device)[positions[0]]  # [N]
            target = word_merge_targets(words, r).expand(batch, num_tokens)
            keep = target == torch.arange(num_tokens, device=device)
            if bool(keep.all()):
                plan = MergePlan.identity(batch, num_tokens, device)
            else:
                plan = plan_from_assignment(keep, torch.where(keep, -1, target), score=(~keep).float())
        return plan

    def __repr__(self) -> str:
        return f"Subword(layer={self.layer})"

