"""HiPrune: training-free token selection from the vision encoder's attention (Liu et al.,
"HiPrune: Training-Free Visual Token Pruning via Hierarchical Attention in Vision Encoders", 2025).

Reproduces ``LlavaMetaForCausalLM.encode_images`` in ``LLaVA/llava/model/llava_arch.py``,
repository Danielement321/HiPrune at commit 6e83a1240874e99a25df34f54221a29bb24b7bc2, with its
defaults (``HIPRUNE_ALPHA=0.1``, ``HIPRUNE_OBJECT_LAYER=9``, ``mm_vision_select_layer=-2``).
With a budget of ``k`` unprotected tokens that stay:

* score of a token = the attention it receives, mean over heads and over **all** queries
  (``rank_by="mean"``; ``"cls"`` = the CLS row only, the alternative the original leaves
  commented out);
* anchors: the ``round(k * alpha / 5)`` best scored tokens of the **anchor layer** (by default
  the original's 1-based object layer 9 of CLIP-L's 24, at the same relative depth:
  0-based ``round(9 * L / 24) - 1``, which is 8 for 24 layers and 4 for 12);
* buffers: the anchors' 4-neighbours on the patch grid (``extra['patch_grid']``; the
  previous and next tokens for text); anchors and buffers together are at most ``alpha * k``;
* registers: the rest of the budget, the best scored of the other tokens in the **register
  layer** (``register_layer=-2``, the second-to-last, whose output LLaVA feeds to the LLM).

The selection happens once, at the register layer, which drops everything the budget leaves
out (more than half the tokens if need be); the earlier layers run untouched. The budget is the
whole schedule: ``k = N - P - sum(r)`` (``ratio=1 - 192/576`` is the original's 192 of 576).
Nothing merges; the outputs keep the input order (the original sorts the kept indices too).

Deliberate differences from the original:

* ``neighbours="grid"`` (default) takes the true 4-neighbourhood of the paper; the original code
  adds index ±1 and ±24 clamped to ``[0, 575]``, so a neighbour "left" of a row's first patch is
  the previous row's last one, and a border anchor gets fewer buffers (and one more register).
  ``neighbours="flat"`` reproduces the code (±1, ±columns, clamped), for any grid;
* the protected tokens (CLS, registers) stay outside the budget; LLaVA drops CLS;
* every batch element gets the budget (the original divides ``HIPRUNE_RETENTION`` by the batch,
  whose elements are the crops of one image in LLaVA-NeXT);
* the tokens keep flowing through the layers after the register layer (LLaVA stops there);
* where anchors and buffers outnumber the budget (the original's ``topk`` then fails), the
  buffers with the lowest anchor-layer score are left out;
* text padding ranks last, and queries from padding are left out of the mean;
* ``single_shot=False`` selects in every layer that the schedule asks to remove tokens, with
  that layer's attention for both anchors and registers (what tomviz did before).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tomviz.merge.base import MergeInputs, MergeMethod
from tomviz.merge.plan import MergePlan
from tomviz.merge.selection import plan_from_assignment, top_k_mask

ORIGINAL_OBJECT_LAYER, ORIGINAL_LAYERS = 9, 24  # HIPRUNE_OBJECT_LAYER (1-based) in CLIP ViT-L/14-336


def grid_neighbours(anchor: torch.Tensor, positions: torch.Tensor, grid: tuple[int, int], num_protected: int,
                    num_tiles: int = 1) -> torch.Tensor:
    """Tokens whose patch cell touches (4-neighbourhood, same tile) an anchor's cell.

    anchor: ``[B, N]`` bool; positions: ``[B, N]`` input position of each token (patches are positions
    ``P .. P + num_tiles*rows*cols - 1``, tile-major, row-major inside a tile). Returns ``[B, N]`` bool.
    """
    rows, cols = grid
    cell, is_patch, cells = _anchor_cells(anchor, positions, num_tiles * rows * cols, num_protected)
    cells = cells.view(-1, 1, rows, cols)  # [B*T, 1, rows, cols]
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], device=anchor.device)
    touching = F.conv2d(cells, cross.view(1, 1, 3, 3), padding=1).view(anchor.shape[0], -1) > 0  # [B, T*rows*cols]
    return touching.gather(1, cell) & is_patch


def flat_neighbours(anchor: torch.Tensor, positions: torch.Tensor, grid: tuple[int, int], num_protected: int,
                    num_tiles: int = 1) -> torch.Tensor:
    """The original code's neighbours: patch index ±1 and ±columns, clamped to the tile's patch range
    (so they wrap across rows). Same arguments and result as :func:`grid_neighbours`."""
    rows, cols = grid
    cell, is_patch, cells = _anchor_cells(anchor, positions, num_tiles * rows * cols, num_protected)
    cells = cells.view(-1, rows * cols)  # [B*T, rows*cols]
    index = torch.arange(rows * cols, device=anchor.device)
    hits = torch.zeros_like(cells)
    for offset in (-1, 1, -cols, cols):
        near = (index + offset).clamp(0, rows * cols - 1).expand_as(cells)  # [B*T, rows*cols] the cell each cell points to
        hits.scatter_add_(1, near, cells)
    return (hits > 0).view(anchor.shape[0], -1).gather(1, cell) & is_patch


def _anchor_cells(anchor: torch.Tensor, positions: torch.Tensor, num_cells: int, num_protected: int):
    """``(cell [B, N] long, is_patch [B, N] bool, cells [B, num_cells] float: 1 on anchor cells)``."""
    cell = (positions - num_protected).clamp(min=0)  # [B, N] cell index (tile-major, row-major)
    is_patch = positions >= num_protected
    cells = torch.zeros(anchor.shape[0], num_cells, device=anchor.device)
    cells.scatter_add_(1, cell, (anchor & is_patch).float())
    return cell, is_patch, (cells > 0).float()


def sequence_neighbours(anchor: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` bool: the tokens right before or after an anchor in the current sequence."""
    after = F.pad(anchor[:, :-1], (1, 0), value=False)
    before = F.pad(anchor[:, 1:], (0, 1), value=False)
    return after | before


def received_attention(attention: torch.Tensor, valid: torch.Tensor | None, rank_by: str) -> torch.Tensor:
    """``[B, N, N]`` (query, key) → ``[B, N]``: the attention each token receives, averaged over
    the queries (the real ones, when ``valid`` ``[B, N]`` marks padding), or the CLS query's row."""
    if rank_by == "cls":
        return attention[:, 0]
    if valid is None:
        return attention.mean(1)
    weights = valid.to(attention.dtype).unsqueeze(-1)  # [B, N, 1]
    return (attention * weights).sum(1) / weights.sum(1).clamp(min=1)


class HiPrune(MergeMethod):
    """Keep anchors, their neighbours and registers; prune the rest (see the module docstring)."""

    name = "hiprune"
    label = "HiPrune (anchors + buffers + registers)"
    needs_attention = True
    needs_positions = True

    def __init__(
        self,
        alpha: float = 0.1,
        anchor_layer: int | None = None,
        register_layer: int = -2,
        single_shot: bool = True,
        rank_by: str = "mean",
        neighbours: str = "grid",
    ):
        """alpha: the share of the budget for anchors and buffers (anchors: ``round(k * alpha / 5)``).
        anchor_layer / register_layer: 0-based layers (negative: from the end) for the single shot;
        ``anchor_layer=None``: the original's layer 9 of 24 at the same relative depth.
        single_shot: select once at ``register_layer`` (False: in every layer that removes tokens).
        rank_by: ``"mean"`` (attention received from all queries) or ``"cls"`` (from CLS).
        neighbours: ``"grid"`` (4-neighbourhood) or ``"flat"`` (the original code's ±1, ±columns)."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if rank_by not in ("mean", "cls"):
            raise ValueError(f"rank_by must be 'mean' or 'cls', got {rank_by!r}")
        if neighbours not in ("grid", "flat"):
            raise ValueError(f"neighbours must be 'grid' or 'flat', got {neighbours!r}")
        self.alpha = float(alpha)
        self.anchor_layer = None if anchor_layer is None else int(anchor_layer)
        self.register_layer = int(register_layer)
        self.single_shot = bool(single_shot)
        self.rank_by = rank_by
        self.neighbours = neighbours

    def selection_layers(self, num_layers: int) -> tuple[int, int]:
        """``(anchor, register)`` as 0-based indices for a model with ``num_layers`` layers."""
        anchor, register = self.anchor_layer, self.register_layer
        if anchor is None:
            anchor = max(0, int(ORIGINAL_OBJECT_LAYER * num_layers / ORIGINAL_LAYERS + 0.5) - 1)
        for layer in (anchor, register):
            if not -num_layers <= layer < num_layers:
                raise ValueError(f"hiprune: layer {layer} does not exist in a {num_layers}-layer model")
        anchor, register = anchor % num_layers, register % num_layers
        if anchor > register:
            raise ValueError(f"hiprune: the anchor layer ({anchor}) comes after the register layer ({register})")
        return anchor, register

    def schedule_for(self, requested: list[int], num_tokens: int, num_protected: int, num_layers: int) -> list[int]:
        if not self.single_shot:
            return requested
        _, register = self.selection_layers(num_layers)
        schedule = [0] * num_layers
        schedule[register] = sum(requested)
        return schedule

    def observed_layers(self, num_layers: int) -> tuple[int, ...]:
        return (self.selection_layers(num_layers)[0],) if self.single_shot else ()

    def removable(self, inputs: MergeInputs) -> int:
        """A selection, not a bipartite step: every unprotected token may go."""
        return inputs.metric.shape[1] - inputs.num_protected

    def plan_removal(self, inputs: MergeInputs, r: int) -> MergePlan:
        if inputs.attention is None:
            raise ValueError("hiprune needs the attention map")
        batch, num_tokens, _ = inputs.metric.shape
        protected = inputs.num_protected
        register_scores = received_attention(inputs.attention.float(), inputs.valid, self.rank_by)
        anchor_scores = register_scores
        if self.single_shot:
            anchor, _ = self.selection_layers(inputs.num_layers)
            if anchor not in inputs.history or inputs.history[anchor].shape[-1] != num_tokens:
                raise ValueError("hiprune: the anchor layer's attention is missing or the tokens changed since")
            anchor_scores = received_attention(inputs.history[anchor].float(), inputs.valid, self.rank_by)
        grid = inputs.extra.get("patch_grid")
        positions = inputs.positions if grid is not None else None
        if positions is None and grid is not None and num_tokens == protected + grid[0] * grid[1]:
            positions = torch.arange(num_tokens, device=inputs.metric.device).expand(batch, num_tokens)  # the input itself
        with torch.no_grad():
            keep = self.select(anchor_scores, register_scores, r, protected, inputs.valid, positions, grid)
            return plan_from_assignment(keep)

    def select(
        self,
        anchor_scores: torch.Tensor,
        register_scores: torch.Tensor,
        r: int,
        num_protected: int,
        valid: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        grid: tuple[int, int] | None = None,
        num_tiles: int = 1,
    ) -> torch.Tensor:
        """``[B, N]`` bool, the tokens that stay: the protected ones and ``N - P - r`` others.

        anchor_scores / register_scores: ``[B, N]`` (higher = kept first); positions/grid: input
        positions and ``(rows, cols)`` of one tile (``num_tiles`` tiles, tile-major), or None for sequence
        neighbours.
        """
        num_tokens = anchor_scores.shape[1]
        budget = num_tokens - num_protected - r
        num_anchors = min(round(budget * self.alpha / 5), budget)
        eligible = torch.ones_like(anchor_scores, dtype=torch.bool)
        eligible[:, :num_protected] = False
        real = eligible if valid is None else eligible & valid
        anchor_ranked = _ranked(anchor_scores, eligible, real)
        anchor = top_k_mask(anchor_ranked, num_anchors)
        if positions is not None and grid is not None:
            find = grid_neighbours if self.neighbours == "grid" else flat_neighbours
            near = find(anchor, positions, tuple(grid), num_protected, num_tiles)
        else:
            near = sequence_neighbours(anchor)
        shallow = anchor | (near & real)
        # more anchors and buffers than the budget: keep the anchors, then the best scored buffers
        first = torch.where(anchor, torch.inf, anchor_ranked)
        shallow = top_k_mask(first.masked_fill(~shallow, -torch.inf), budget) & shallow
        registers_left = budget - shallow.sum(1, keepdim=True)  # [B, 1]
        rest = _ranked(register_scores, eligible & ~shallow, real)
        rank = rest.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # [B, N] rank among the rest
        keep = shallow | ((rank < registers_left) & eligible & ~shallow)
        keep[:, :num_protected] = True
        return keep

    def plan_received(self, anchor_scores: torch.Tensor, register_scores: torch.Tensor, keep: int,
                      grid: tuple[int, int], num_tiles: int = 1) -> MergePlan:
        """The same selection on tokens that have no protected ones and no attention map, only the attention
        each received (a VLM's visual tokens at the boundary): ``keep`` of the ``[B, V]`` scored tokens stay.
        anchor_scores / register_scores: ``[B, V]`` from the anchor and the register layer; the tokens form
        ``num_tiles`` tiles of ``grid`` (rows, cols), tile-major."""
        batch, num_tokens = anchor_scores.shape
        positions = torch.arange(num_tokens, device=anchor_scores.device).expand(batch, num_tokens)
        with torch.no_grad():
            chosen = self.select(anchor_scores, register_scores, num_tokens - keep, 0, None, positions, grid, num_tiles)
            return plan_from_assignment(chosen)

    def __repr__(self) -> str:
        return (
            f"HiPrune(alpha={self.alpha}, anchor_layer={self.anchor_layer}, register_layer={self.register_layer}, "
            f"single_shot={self.single_shot}, rank_by={self.rank_by!r}, neighbours={self.neighbours!r})"
        )


def _ranked(scores: torch.Tensor, eligible: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` float scores for ranking: ``-inf`` where not eligible, padding below every real token."""
    ranked = scores.float().masked_fill(~eligible, -torch.inf)
    return ranked.masked_fill(eligible & ~real, torch.finfo(torch.float32).min)
