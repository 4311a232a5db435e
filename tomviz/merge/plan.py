"""The one result type of every merge method: where each token goes.

A :class:`MergePlan` maps every token of a layer's input sequence to a token of
its output sequence (or to nothing: pruned). Applying it is a size-weighted
mean over each output token's members. The plan holds index tensors only, so
it can be computed once under ``no_grad`` and applied to any tensor that is
aligned with the tokens (hidden states, sizes, source maps).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PRUNED = -1


@dataclass(frozen=True)
class MergeEdges:
    """The merges of one layer, for the trace. All ``[B, r]``, indices into the layer's input tokens
    (a ragged plan pads the rows of the elements that merged fewer with src = dst = -1)."""

    src: torch.Tensor  # long: the token that merges away
    dst: torch.Tensor  # long: the token it merges into
    score: torch.Tensor  # float: the similarity that chose the pair


@dataclass(frozen=True)
class MergePlan:
    """Where every input token goes.

    ``dst[b, i]`` is the output index of input token ``i`` (``0 <= dst < num_out``)
    or ``PRUNED`` (-1) when the token is dropped. Output tokens are numbered in the
    order the method defines (protected tokens first).
    """

    dst: torch.Tensor  # [B, N_in] long
    num_out: int
    edges: MergeEdges | None = None
    # Optional fast path: the input token that represents each output slot, ``[B, num_out]``.
    # When given, every other token with ``dst >= 0`` must be an ``edges.src`` (folded into
    # its slot); merging is then a gather plus a scatter of the r folded tokens only.
    keep: torch.Tensor | None = None
    # Optional merge rules other than ToMe's (size-weighted mean, sizes add), for methods whose
    # authors merge differently (DiffRate). Both ``[B, N_in, 1]`` float, None = ToMe's rule:
    # ``mean_weights``: each token's weight in its output's mean (None = its size);
    # ``size_factors``: each token adds ``size * factor`` to its output's size (None = 1).
    mean_weights: torch.Tensor | None = None
    size_factors: torch.Tensor | None = None
    # Per-element counts (DToMe): the batch elements that removed more tokens than others leave
    # their last output slots empty. Merging gives an empty slot zeros and size 0; the engine
    # marks it invalid (padding), so attention ignores it. Needs the general path (no ``keep``).
    ragged: bool = False

    @property
    def num_in(self) -> int:
        return self.dst.shape[1]

    @property
    def is_identity(self) -> bool:
        """Nothing merges, nothing is dropped and nothing moves."""
        if self.num_out != self.num_in or self.edges is not None:
            return False
        return bool((self.dst == torch.arange(self.num_in, device=self.dst.device)).all())

    @staticmethod
    def identity(batch: int, num_tokens: int, device: torch.device | str = "cpu") -> "MergePlan":
        dst = torch.arange(num_tokens, device=device).expand(batch, num_tokens)
        return MergePlan(dst=dst, num_out=num_tokens)

    def _flat_index(self) -> torch.Tensor:
        """``[B*N_in]`` indices into a ``[B*(num_out+1)]`` buffer whose last row per batch is a bin for pruned tokens."""
        batch = self.dst.shape[0]
        width = self.num_out + 1
        dst = torch.where(self.dst < 0, self.num_out, self.dst)
        offsets = torch.arange(batch, device=dst.device).unsqueeze(1) * width  # [B, 1]
        return (dst + offsets).reshape(-1)

    def merge(self, x: torch.Tensor, sizes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Size-weighted mean of each group (or the plan's ``mean_weights`` / ``size_factors`` rule).

        x: ``[B, N_in, C]``; sizes: ``[B, N_in, 1]`` (None = all ones).
        Returns ``(x_out [B, num_out, C], sizes_out [B, num_out, 1])``.
        """
        batch, _, channels = x.shape
        if self.mean_weights is not None or self.size_factors is not None:
            return self._merge_weighted(x, sizes)
        if self.keep is not None and self.edges is not None:
            return self._merge_fast(x, sizes)
        if sizes is None:
            sizes = x.new_ones(batch, self.num_in, 1)
        index = self._flat_index()
        width = self.num_out + 1
        weighted = (x * sizes).reshape(-1, channels)
        x_sum = x.new_zeros(batch * width, channels).index_add_(0, index, weighted)
        s_sum = sizes.new_zeros(batch * width, 1).index_add_(0, index, sizes.reshape(-1, 1))
        x_sum = x_sum.view(batch, width, channels)[:, : self.num_out]
        s_sum = s_sum.view(batch, width, 1)[:, : self.num_out]
        if self.ragged:  # empty slots: 0 / tiny = 0
            return x_sum / s_sum.clamp(min=torch.finfo(s_sum.dtype).tiny), s_sum
        return x_sum / s_sum, s_sum

    def _merge_weighted(self, x: torch.Tensor, sizes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_out = Σ w·x / Σ w`` with ``w = mean_weights`` (or sizes) and ``sizes_out = Σ size·size_factors``:
        ``[B, N_in, C] → [B, num_out, C]``, sizes ``[B, num_out, 1]``."""
        batch, _, channels = x.shape
        if sizes is None:
            sizes = x.new_ones(batch, self.num_in, 1)
        weights = (sizes if self.mean_weights is None else self.mean_weights).to(x.dtype)
        added = sizes if self.size_factors is None else sizes * self.size_factors.to(sizes.dtype)
        index = self._flat_index()
        width = self.num_out + 1
        x_sum = x.new_zeros(batch * width, channels).index_add_(0, index, (x * weights).reshape(-1, channels))
        w_sum = x.new_zeros(batch * width, 1).index_add_(0, index, weights.reshape(-1, 1))
        s_sum = added.new_zeros(batch * width, 1).index_add_(0, index, added.reshape(-1, 1))
        x_out = x_sum.view(batch, width, channels)[:, : self.num_out] / w_sum.view(batch, width, 1)[:, : self.num_out]
        return x_out, s_sum.view(batch, width, 1)[:, : self.num_out]

    def _merge_fast(self, x: torch.Tensor, sizes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Select the representatives, then fold the r other tokens into their slots:
        ``[B, N_in, C] → [B, num_out, C]``.

        Only the folded rows are weighted: ``x_slot += Σ s_src (x_src - x_slot) / S_slot``,
        which equals the size-weighted mean. Works on flattened rows (``index_select`` /
        ``index_add_``), several times faster on CPU than ``gather`` with expanded indices.
        """
        batch, num_in, channels = x.shape
        src = self.edges.src  # [B, r]
        slot = self.dst.gather(1, src)  # [B, r] output slot of each folded token
        if batch == 1:
            keep_rows, src_rows, slot_rows = self.keep[0], src[0], slot[0]
        else:
            in_offset = torch.arange(batch, device=x.device).unsqueeze(1) * num_in  # [B, 1]
            out_offset = torch.arange(batch, device=x.device).unsqueeze(1) * self.num_out
            keep_rows = (self.keep + in_offset).reshape(-1)  # [B*num_out]
            src_rows = (src + in_offset).reshape(-1)  # [B*r]
            slot_rows = (slot + out_offset).reshape(-1)  # [B*r]
        flat_x = x.reshape(-1, channels)  # [B*N_in, C]
        if sizes is None:
            sizes = x.new_ones(batch, num_in, 1)
        flat_sizes = sizes.reshape(-1, 1)
        src_sizes = flat_sizes.index_select(0, src_rows)  # [B*r, 1]
        new_sizes = flat_sizes.index_select(0, keep_rows).index_add_(0, slot_rows, src_sizes)  # [B*num_out, 1]
        out = flat_x.index_select(0, keep_rows)  # [B*num_out, C]
        delta = (flat_x.index_select(0, src_rows) - out.index_select(0, slot_rows)) * (src_sizes / new_sizes.index_select(0, slot_rows))
        out.index_add_(0, slot_rows, delta)
        return out.view(batch, self.num_out, channels), new_sizes.view(batch, self.num_out, 1)

    def representatives(self) -> torch.Tensor:
        """``[B, num_out]`` long: the input token that each output token stands at (a position-keeping model
        gives the output that token's position). With ``keep``: it; else each group's first member that does not
        merge away (not an ``edges.src``: ToMe's destination), or its first member when all of them do. An empty
        slot (ragged plan) gets 0."""
        if self.keep is not None:
            return self.keep
        batch, num_in = self.dst.shape
        rank = torch.arange(num_in, device=self.dst.device).expand(batch, num_in).clone()  # [B, N_in]
        if self.edges is not None:  # tokens that merge away rank after every token that stays
            src = self.edges.src
            rank.scatter_add_(1, src.clamp(min=0), torch.where(src >= 0, num_in, 0))
        slot = torch.where(self.dst < 0, self.num_out, self.dst)
        first = torch.full((batch, self.num_out + 1), 2 * num_in, dtype=torch.long, device=self.dst.device)
        first = first.scatter_reduce_(1, slot, rank, reduce="amin")[:, : self.num_out]
        return torch.where(first >= 2 * num_in, 0, first % num_in)

    def reduce_any(self, flags: torch.Tensor) -> torch.Tensor:
        """Logical OR of a per-token flag over each group. flags: ``[B, N_in]`` bool → ``[B, num_out]`` bool."""
        batch = flags.shape[0]
        width = self.num_out + 1
        out = flags.new_zeros(batch * width, dtype=torch.float32)
        out.index_add_(0, self._flat_index(), flags.reshape(-1).float())
        return out.view(batch, width)[:, : self.num_out] > 0

    def reduce_min(self, values: torch.Tensor) -> torch.Tensor:
        """Smallest value over each group. values: ``[B, N_in]`` long → ``[B, num_out]``."""
        batch = values.shape[0]
        out = torch.full((batch, self.num_out + 1), torch.iinfo(values.dtype).max, dtype=values.dtype, device=values.device)
        slot = torch.where(self.dst < 0, self.num_out, self.dst)
        return out.scatter_reduce_(1, slot, values, reduce="amin")[:, : self.num_out]

    def compose(self, source: torch.Tensor) -> torch.Tensor:
        """Follow a source map through this plan.

        source: ``[B, N0]`` long, the current token index of each input token of the model
        (-1 = pruned earlier). Returns the same map after this plan.
        """
        gathered = self.dst.gather(1, source.clamp(min=0))  # [B, N0]
        return torch.where(source < 0, PRUNED, gathered)

    def unmerge(self, x_out: torch.Tensor) -> torch.Tensor:
        """Copy each output token back to all its members; pruned tokens get zeros.

        x_out: ``[B, num_out, C]`` → ``[B, N_in, C]``.
        """
        channels = x_out.shape[-1]
        index = self.dst.clamp(min=0).unsqueeze(-1).expand(-1, -1, channels)
        x_in = x_out.gather(1, index)
        return x_in.masked_fill((self.dst < 0).unsqueeze(-1), 0.0)
