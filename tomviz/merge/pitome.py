"""PiToMe: energy-protected matching (Tran et al., "Accelerating Transformers with
Spectrum-Preserving Token Merging", NeurIPS 2024). Written from REFERENCES §2.

At each layer:

1. energy of token i = mean over tokens j of ELU(cos(k_i, k_j) - margin) (α = 1), on
   the keys averaged over heads; the margin shrinks with depth:
   ``margin_l = margin * (1 - l / L)``. A high energy means i sits in a large cluster
   of similar tokens (redundant); a low energy means it is isolated (informative);
2. the ``2r`` unprotected tokens with the highest energy are mergeable, the others
   are protected for this layer;
3. the mergeable tokens alternate into A and B by energy rank (ranks 0, 2, 4, ... → A);
   every A merges into its most similar B (ToMe's matching,
   :func:`tomviz.merge.tome.bipartite_plan`, on the mergeable tokens only).

Exactly ``r`` tokens go. The outputs keep the input order (each merged group sits at
its B token's place). Padding (text batches) counts neither in the energy nor as a
real token's partner: padding tokens are mergeable first, and A/B alternate within
padding and within real tokens separately, so pairs never mix them.

``pitome_text`` (:class:`PiToMeText`) is tomviz's adaptation for sentence encoders:
the same steps, and the closing special token ([SEP], the last real token) is
mergeable only when nothing else is left.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tomviz.merge.base import MergeInputs, MergeMethod, max_removable
from tomviz.merge.plan import MergePlan
from tomviz.merge.selection import plan_from_assignment
from tomviz.merge.tome import bipartite_plan

LAST_RESORT = -1e30  # mergeable score of a token merged only when nothing else is left


def energy_scores(metric: torch.Tensor, margin: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """PiToMe's energy: ``[B, N, C]`` features → ``[B, N]``, the mean over the (real) tokens j
    of ``ELU(cos(i, j) - margin)``."""
    unit = F.normalize(metric.float(), dim=-1)
    terms = F.elu(unit @ unit.transpose(1, 2) - margin)  # [B, N, N]
    if valid is None:
        return terms.mean(-1)
    weights = valid.unsqueeze(1).float()  # [B, 1, N]: only real tokens count as j
    return (terms * weights).sum(-1) / weights.sum(-1).clamp(min=1)


def layer_margin(margin: float, layer: int, num_layers: int) -> float:
    """The margin at ``layer`` (0-based): ``margin * (1 - layer / num_layers)``."""
    return margin * (1.0 - layer / max(num_layers, 1))


def alternate_sides(valid_sub: torch.Tensor | None, length: int) -> torch.Tensor:
    """``[B, 2r]`` (or ``[2r]``) bool A side for tokens listed in energy order: ranks 0, 2, 4, ...
    within each kind (padding / real) go to A."""
    if valid_sub is None:
        return torch.arange(length) % 2 == 0
    rank_real = valid_sub.long().cumsum(1) - 1
    rank_pad = (~valid_sub).long().cumsum(1) - 1
    return torch.where(valid_sub, rank_real, rank_pad) % 2 == 0


class PiToMe(MergeMethod):
    """Energy-protected bipartite matching."""

    name = "pitome"
    label = "PiToMe (energy-protected matching)"

    def __init__(self, margin: float = 0.9):
        self.margin = float(margin)  # margin at layer 0 (0.9 for CLIP, 0.75 for DeiT in the paper)

    def mergeable_scores(self, inputs: MergeInputs) -> torch.Tensor:
        """``[B, N]``: energy, with protected tokens at ``-inf`` and padding at ``+inf``."""
        margin = layer_margin(self.margin, inputs.layer, inputs.num_layers)
        scores = energy_scores(inputs.metric, margin, inputs.valid)
        scores[:, : inputs.num_protected] = -torch.inf
        if inputs.valid is not None:
            scores = scores.masked_fill(~inputs.valid, torch.inf)
        return scores

    def plan(self, inputs: MergeInputs, r: int) -> MergePlan:
        metric, valid = inputs.metric, inputs.valid
        batch, num_tokens, _ = metric.shape
        r = min(r, max_removable(num_tokens, inputs.num_protected))
        if r <= 0:
            return MergePlan.identity(batch, num_tokens, metric.device)
        with torch.no_grad():
            scores = self.mergeable_scores(inputs)
            mergeable = scores.argsort(dim=1, descending=True, stable=True)[:, : 2 * r]  # [B, 2r] by energy
            metric_sub = metric.gather(1, mergeable.unsqueeze(-1).expand(-1, -1, metric.shape[-1]))
            valid_sub = None if valid is None else valid.gather(1, mergeable)
            src, dst, score = _match_mergeable(metric_sub, valid_sub, r)  # [B, r] indices into the 2r
            src, dst = mergeable.gather(1, src), mergeable.gather(1, dst)
            keep = torch.ones(batch, num_tokens, dtype=torch.bool, device=metric.device).scatter_(1, src, False)
            target = torch.full_like(keep, -1, dtype=torch.long).scatter_(1, src, dst)
            edge_score = torch.zeros(batch, num_tokens, device=metric.device).scatter_(1, src, score.float())
        return plan_from_assignment(keep, target, score=edge_score)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(margin={self.margin})"


def _match_mergeable(metric_sub: torch.Tensor, valid_sub: torch.Tensor | None, r: int):
    """ToMe's matching on the ``2r`` mergeable tokens, A/B alternating by energy rank.

    metric_sub: ``[B, 2r, C]`` in energy order. Returns ``(src, dst, score)``, each ``[B, r]``,
    src/dst indexing the ``2r`` tokens. With padding the A/B split differs per batch
    element (it alternates within each kind), so the elements are matched one by one.
    """
    if valid_sub is None:
        is_a = alternate_sides(None, metric_sub.shape[1]).to(metric_sub.device)
        edges = bipartite_plan(metric_sub, r, num_protected=0, is_a=is_a).edges
        return edges.src, edges.dst, edges.score
    sides = alternate_sides(valid_sub, metric_sub.shape[1])
    parts = [
        bipartite_plan(metric_sub[b : b + 1], r, 0, valid_sub[b : b + 1], is_a=sides[b]).edges
        for b in range(metric_sub.shape[0])
    ]
    return tuple(torch.cat([getattr(e, k) for e in parts]) for k in ("src", "dst", "score"))


class PiToMeText(PiToMe):
    """PiToMe for sentence encoders: [SEP] (the last real token) is merged only as a last resort."""

    name = "pitome_text"
    label = "PiToMe, text variant"

    def mergeable_scores(self, inputs: MergeInputs) -> torch.Tensor:
        scores = super().mergeable_scores(inputs)
        batch, num_tokens = scores.shape
        if inputs.valid is None:
            last_real = torch.full((batch,), num_tokens - 1, device=scores.device)
        else:
            positions = torch.arange(num_tokens, device=scores.device).expand(batch, num_tokens)
            last_real = torch.where(inputs.valid, positions, -1).max(1).values
        rows = torch.arange(batch, device=scores.device)
        last_real = last_real.clamp(min=inputs.num_protected)
        protected_now = torch.isinf(scores[rows, last_real]) & (scores[rows, last_real] < 0)
        scores[rows, last_real] = torch.where(protected_now, scores[rows, last_real], LAST_RESORT)
        return scores
