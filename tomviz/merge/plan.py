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
    """The merges of one layer, for the trace. All ``[B, r]``, indices into the layer's input tokens."""

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

    @property
    def num_in(self) -> int:
        return self.dst.shape[1]

    @property
    def is_identity(self) -> bool:
        return self.num_out == self.num_in and self.edges is None

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
        """Size-weighted mean of each group.

        x: ``[B, N_in, C]``; sizes: ``[B, N_in, 1]`` (None = all ones).
        Returns ``(x_out [B, num_out, C], sizes_out [B, num_out, 1])``.
        """
        batch, _, channels = x.shape
        if sizes is None:
            sizes = x.new_ones(batch, self.num_in, 1)
        index = self._flat_index()
        width = self.num_out + 1
        weighted = (x * sizes).reshape(-1, channels)
        x_sum = x.new_zeros(batch * width, channels).index_add_(0, index, weighted)
        s_sum = sizes.new_zeros(batch * width, 1).index_add_(0, index, sizes.reshape(-1, 1))
        x_sum = x_sum.view(batch, width, channels)[:, : self.num_out]
        s_sum = s_sum.view(batch, width, 1)[:, : self.num_out]
        return x_sum / s_sum, s_sum

    def reduce_any(self, flags: torch.Tensor) -> torch.Tensor:
        """Logical OR of a per-token flag over each group. flags: ``[B, N_in]`` bool → ``[B, num_out]`` bool."""
        batch = flags.shape[0]
        width = self.num_out + 1
        out = flags.new_zeros(batch * width, dtype=torch.float32)
        out.index_add_(0, self._flat_index(), flags.reshape(-1).float())
        return out.view(batch, width)[:, : self.num_out] > 0

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
