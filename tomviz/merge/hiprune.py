"""HiPrune-style selection (Liu et al., "HiPrune: Training-Free Visual Token Pruning via
Hierarchical Attention in Vision Encoders", 2025). Written from REFERENCES §2.

HiPrune keeps three kinds of tokens within a budget and drops the rest:
anchors (the most attended tokens: the object), buffers (the spatial neighbours
of the anchors: their context) and registers (the most attended of the rest: global
information). The paper reads the anchors from a middle layer and the registers
from a deep one, once. tomviz plans layer by layer, so here every layer that the
schedule asks to remove ``r`` tokens selects with its own CLS attention:

* budget ``k = N - P - r`` unprotected tokens stay (the protected ones always do);
* anchors: the ``round(anchor_fraction * k)`` (at least 1) most attended tokens;
* buffers: up to ``round(buffer_fraction * k)`` of the anchors' 4-neighbours on the
  patch grid (``extra['patch_grid']``), the most attended first; with no grid (text)
  the neighbours are the previous and next tokens;
* registers: the rest of the budget, by attention among the tokens left.

The others are pruned (group -1); nothing merges. Outputs keep the input order.
To find a token's grid cell after earlier layers pruned, the method reads the
input position of each token (``MergeInputs.positions``, tracked by the engine).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tomviz.merge.base import MergeInputs, MergeMethod, max_removable
from tomviz.merge.plan import MergePlan
from tomviz.merge.selection import plan_from_assignment, top_k_mask


def grid_neighbours(anchor: torch.Tensor, positions: torch.Tensor, grid: tuple[int, int], num_protected: int) -> torch.Tensor:
    """Tokens whose patch cell touches (4-neighbourhood) an anchor's cell.

    anchor: ``[B, N]`` bool; positions: ``[B, N]`` input position of each token
    (patches are positions ``P .. P + rows*cols - 1``, row-major). Returns ``[B, N]`` bool.
    """
    rows, cols = grid
    batch = anchor.shape[0]
    cell = (positions - num_protected).clamp(min=0)  # [B, N] row-major cell index
    is_patch = positions >= num_protected
    cells = torch.zeros(batch, rows * cols, device=anchor.device)
    cells.scatter_add_(1, cell, (anchor & is_patch).float())
    cells = (cells > 0).float().view(batch, 1, rows, cols)
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], device=anchor.device)
    touching = F.conv2d(cells, cross.view(1, 1, 3, 3), padding=1).view(batch, rows * cols) > 0
    return touching.gather(1, cell) & is_patch


def sequence_neighbours(anchor: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` bool: the tokens right before or after an anchor in the current sequence."""
    after = F.pad(anchor[:, :-1], (1, 0), value=False)
    before = F.pad(anchor[:, 1:], (0, 1), value=False)
    return after | before


class HiPrune(MergeMethod):
    """Keep anchors, their neighbours and registers; prune the rest."""

    name = "hiprune"
    label = "HiPrune (anchors + buffers + registers)"
    needs_cls_attention = True
    needs_positions = True

    def __init__(self, anchor_fraction: float = 0.25, buffer_fraction: float = 0.5):
        if anchor_fraction <= 0 or buffer_fraction < 0 or anchor_fraction + buffer_fraction > 1:
            raise ValueError("need anchor_fraction > 0, buffer_fraction >= 0 and their sum <= 1")
        self.anchor_fraction = float(anchor_fraction)
        self.buffer_fraction = float(buffer_fraction)

    def plan(self, inputs: MergeInputs, r: int) -> MergePlan:
        if inputs.cls_attention is None:
            raise ValueError("hiprune needs the CLS attention")
        batch, num_tokens, _ = inputs.metric.shape
        protected = inputs.num_protected
        r = min(r, max_removable(num_tokens, protected))
        if r <= 0:
            return MergePlan.identity(batch, num_tokens, inputs.metric.device)
        grid = inputs.extra.get("patch_grid")
        positions = inputs.positions if grid is not None else None
        if positions is None and grid is not None and num_tokens == protected + grid[0] * grid[1]:
            positions = torch.arange(num_tokens, device=inputs.metric.device).expand(batch, num_tokens)  # the input itself
        with torch.no_grad():
            keep = self.select(inputs.cls_attention, r, protected, inputs.valid, positions, grid)
            plan = plan_from_assignment(keep)
        return plan

    def select(
        self,
        attention: torch.Tensor,
        r: int,
        num_protected: int,
        valid: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``[B, N]`` bool, the tokens that stay. attention: ``[B, N]`` CLS attention;
        positions/grid: input positions and ``(rows, cols)``, or None for sequence neighbours."""
        num_tokens = attention.shape[1]
        budget = num_tokens - num_protected - r
        num_anchors = max(1, int(round(self.anchor_fraction * budget)))
        num_buffers = int(round(self.buffer_fraction * budget))
        ranked = attention.float().clone()
        if valid is not None:  # padding only fills a budget that real tokens cannot
            ranked = ranked.masked_fill(~valid, torch.finfo(ranked.dtype).min)
        ranked[:, :num_protected] = -torch.inf  # protected tokens are kept outside the budget
        anchor = top_k_mask(ranked, num_anchors)
        if positions is not None and grid is not None:
            near = grid_neighbours(anchor, positions, tuple(grid), num_protected)
        else:
            near = sequence_neighbours(anchor)
        candidates = ranked.masked_fill(~near | anchor, -torch.inf)
        buffer = top_k_mask(candidates, num_buffers) & torch.isfinite(candidates)
        chosen = anchor | buffer
        registers_left = budget - chosen.sum(1, keepdim=True)  # [B, 1]
        rest = ranked.masked_fill(chosen, -torch.inf)
        order_rank = rest.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # [B, N] rank among the rest
        register = (order_rank < registers_left) & ~chosen
        keep = chosen | register
        keep[:, :num_protected] = True
        return keep

    def __repr__(self) -> str:
        return f"HiPrune(anchor_fraction={self.anchor_fraction}, buffer_fraction={self.buffer_fraction})"
