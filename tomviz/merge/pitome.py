"""PiToMe: energy-protected matching (Tran et al., "Accelerating Transformers with
Spectrum-Preserving Token Merging", NeurIPS 2024).

Reproduces ``pitome_vision`` (with its ``pitome`` and ``pitome_bsm`` branches) of
``algo/pitome/merge.py`` in https://github.com/hchautran/PiToMe, commit
``550b5deed94aadfeac28bfbe381d87e672044a40``, and the layer settings of that repository's
patches ``algo/pitome/patch/{deit,mae,clip,clip_hf}.py`` as presets. Written from the
code's definition (no code copied; that repository's licence is non-commercial).

At each layer, with ``P`` protected tokens (CLS, ...) set aside and ``T = N - P`` left:

1. energy of token i = mean over the T tokens j (i itself included) of
   ``ELU(cos(m_i, m_j) - margin_l)`` (α = 1), where ``m`` is the metric (the keys summed
   over heads, or the hidden states) and ``margin_l = margin * (1 - l / L)``. A high
   energy means i sits in a large cluster of similar tokens (redundant); a low energy
   means it is isolated (informative). Protected tokens take no part: they are neither
   scored nor counted as anyone's neighbour;
2. the T tokens are ranked by energy, highest first;
3. ``pitome`` (the default): the ``2r`` highest are mergeable, the others stay; the
   mergeable tokens alternate into A and B by rank (ranks 0, 2, 4, ... → A), and *every*
   A token merges into its most similar B token;
   ``pitome_bsm`` (``bsm_layers``): all T tokens alternate into A and B by rank, and
   ToMe's matching merges the ``r`` A tokens with the most similar best B;
   plain ToMe (``tome_layers``): :func:`tomviz.merge.tome.bipartite_plan` on the whole
   sequence (the original's ``bsm``).

Exactly ``r`` tokens go (at most ``T // 2``). Merged values are the size-weighted mean.

Presets (``preset=``), from the authors' model patches:

* ``"deit"`` (``patch/deit.py``): margin 0.75; ``pitome_bsm`` in the first ``ceil(L/2)``
  layers, ``pitome`` after;
* ``"mae"`` (``patch/mae.py``): margin 0.75; ``pitome`` in the first ``ceil(L/2)`` layers,
  ``pitome_bsm`` after;
* ``"clip"`` (``patch/clip.py``, open-CLIP through LAVIS): margin 0.95, the hidden states
  after the attention residual as the metric, ``pitome`` in every layer;
* ``"clip_hf"`` (``patch/clip_hf.py``, transformers' CLIP): margin 0.9, the hidden states
  as the metric, plain ToMe in layers 0..12 and ``pitome`` after.

Explicit ``margin``/``bsm_layers``/``tome_layers``/``metric`` override the preset.

Deliberate differences from the original:

* all ``num_protected`` leading tokens are set aside (the original sets aside only CLS,
  so a DeiT distillation token or DINOv2 registers would be merged there);
* the output keeps the input order (protected, then each group at its first member's
  place); the original outputs ``[CLS, protected by energy rank, B by energy rank]``. The
  groups are the same; the next layer's decisions do not depend on the order;
* ties in energy are broken by position (a stable sort; the original's ``argsort`` is
  not stable);
* merged values are always size-weighted means (``clip_hf`` takes unweighted means,
  ``merge_mean``), and ``clip_hf`` merges after the MLP (on the layer output), where
  tomviz merges between attention and MLP;
* padding (text batches) counts neither in the energy nor as a real token's partner:
  padding is mergeable first, and A/B alternate within padding and within real tokens
  separately, so pairs never mix them (the original vision code has no padding).

``pitome_text`` (:class:`PiToMeText`) is tomviz's adaptation for sentence encoders, not
the authors' ``pitome_text`` (a Gaussian kernel energy, A = the higher-energy half):
the steps above, and the closing special token ([SEP], the last real token) is
mergeable only when nothing else is left.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from tomviz.merge.base import MergeInputs, MergeMethod
from tomviz.merge.plan import MergePlan
from tomviz.merge.selection import plan_from_assignment
from tomviz.merge.tome import bipartite_plan

LAST_RESORT = -1e30  # mergeable score of a token merged only when nothing else is left

# The settings of the authors' model patches (see the module docstring).
PRESETS: dict[str, dict] = {
    "deit": {"margin": 0.75, "bsm_layers": "first_half", "tome_layers": 0, "metric": "keys"},
    "mae": {"margin": 0.75, "bsm_layers": "second_half", "tome_layers": 0, "metric": "keys"},
    "clip": {"margin": 0.95, "bsm_layers": (), "tome_layers": 0, "metric": "hidden"},
    "clip_hf": {"margin": 0.9, "bsm_layers": (), "tome_layers": 13, "metric": "hidden"},
}
DEFAULTS = {"margin": 0.9, "bsm_layers": (), "tome_layers": 0, "metric": "keys"}


def energy_scores(metric: torch.Tensor, margin: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """PiToMe's energy: ``[B, T, C]`` features → ``[B, T]``, the mean over the (real) tokens j
    of ``ELU(cos(i, j) - margin)``. Pass the tokens that take part only (no CLS)."""
    unit = F.normalize(metric.float(), dim=-1)
    terms = F.elu(unit @ unit.transpose(1, 2) - margin)  # [B, T, T]
    if valid is None:
        return terms.mean(-1)
    weights = valid.unsqueeze(1).float()  # [B, 1, T]: only real tokens count as j
    return (terms * weights).sum(-1) / weights.sum(-1).clamp(min=1)


def layer_margin(margin: float, layer: int, num_layers: int) -> float:
    """The margin at ``layer`` (0-based): ``margin * (1 - layer / num_layers)``."""
    return margin * (1.0 - layer / max(num_layers, 1))


def alternate_sides(valid_sub: torch.Tensor | None, length: int) -> torch.Tensor:
    """``[B, n]`` (or ``[n]``) bool A side for tokens listed in energy order: ranks 0, 2, 4, ...
    within each kind (padding / real) go to A."""
    if valid_sub is None:
        return torch.arange(length) % 2 == 0
    rank_real = valid_sub.long().cumsum(1) - 1
    rank_pad = (~valid_sub).long().cumsum(1) - 1
    return torch.where(valid_sub, rank_real, rank_pad) % 2 == 0


def _layer_set(spec: str | Sequence[int], num_layers: int) -> set[int]:
    """``"first_half"`` → layers ``0..ceil(L/2)-1``; ``"second_half"`` → the rest; or explicit indices."""
    half = math.ceil(num_layers / 2)
    if spec == "first_half":
        return set(range(half))
    if spec == "second_half":
        return set(range(half, num_layers))
    if isinstance(spec, str):
        raise ValueError(f"bsm_layers: 'first_half', 'second_half' or a list of layers, not {spec!r}")
    return {int(layer) for layer in spec}


class PiToMe(MergeMethod):
    """Energy-protected bipartite matching (the authors' ``pitome_vision``).

    Options: ``margin`` at layer 0 (default 0.9); ``bsm_layers``: the layers that run the
    ``pitome_bsm`` variant (``"first_half"``, ``"second_half"`` or a list); ``tome_layers``:
    the first layers that run plain ToMe; ``metric``: ``"keys"`` or ``"hidden"``;
    ``preset``: one of :data:`PRESETS` (the authors' settings per model family).
    """

    name = "pitome"
    label = "PiToMe (energy-protected matching)"

    def __init__(
        self,
        margin: float | None = None,
        bsm_layers: str | Sequence[int] | None = None,
        tome_layers: int | None = None,
        metric: str | None = None,
        preset: str | None = None,
    ):
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown pitome preset {preset!r}: choose one of {', '.join(PRESETS)}")
        base = PRESETS[preset] if preset else DEFAULTS
        self.preset = preset
        self.margin = float(base["margin"] if margin is None else margin)  # margin at layer 0
        self.bsm_layers = base["bsm_layers"] if bsm_layers is None else bsm_layers
        if not isinstance(self.bsm_layers, str):
            self.bsm_layers = tuple(int(layer) for layer in self.bsm_layers)
        _layer_set(self.bsm_layers, 1)  # validate
        self.tome_layers = int(base["tome_layers"] if tome_layers is None else tome_layers)
        self.metric = base["metric"] if metric is None else metric
        if self.metric not in ("keys", "hidden"):
            raise ValueError(f"pitome metric: 'keys' or 'hidden', not {self.metric!r}")

    def layer_variant(self, layer: int, num_layers: int) -> str:
        """``"tome"``, ``"bsm"`` (``pitome_bsm``) or ``"pitome"`` at ``layer`` (0-based)."""
        if layer < self.tome_layers:
            return "tome"
        return "bsm" if layer in _layer_set(self.bsm_layers, num_layers) else "pitome"

    def _metric(self, inputs: MergeInputs) -> torch.Tensor:
        if self.metric == "hidden":
            if inputs.hidden is None:
                raise ValueError("pitome with metric='hidden' needs MergeInputs.hidden")
            return inputs.hidden
        return inputs.metric

    def mergeable_scores(self, inputs: MergeInputs, metric: torch.Tensor) -> torch.Tensor:
        """``[B, N]``: energy of the unprotected tokens (computed among them only), protected
        tokens at ``-inf``, padding at ``+inf``."""
        p = inputs.num_protected
        margin = layer_margin(self.margin, inputs.layer, inputs.num_layers)
        valid = None if inputs.valid is None else inputs.valid[:, p:]
        energy = energy_scores(metric[:, p:], margin, valid)  # [B, T]
        scores = torch.cat([energy.new_full((energy.shape[0], p), -torch.inf), energy], dim=1)
        if inputs.valid is not None:
            scores = scores.masked_fill(~inputs.valid, torch.inf)
        return scores

    def plan_removal(self, inputs: MergeInputs, r: int) -> MergePlan:
        metric, valid, p = self._metric(inputs), inputs.valid, inputs.num_protected
        batch, num_tokens, channels = metric.shape
        variant = self.layer_variant(inputs.layer, inputs.num_layers)
        if variant == "tome":
            return bipartite_plan(metric, r, p, valid)
        with torch.no_grad():
            scores = self.mergeable_scores(inputs, metric)
            order = scores.argsort(dim=1, descending=True, stable=True)  # [B, N], protected last
            # pitome: the 2r highest take part, every A merges; bsm: all T take part, the best r A merge
            taking_part = order[:, : 2 * r] if variant == "pitome" else order[:, : num_tokens - p]  # [B, n]
            metric_sub = metric.gather(1, taking_part.unsqueeze(-1).expand(-1, -1, channels))  # [B, n, C]
            valid_sub = None if valid is None else valid.gather(1, taking_part)
            src, dst, score = _match_by_rank(metric_sub, valid_sub, r)  # [B, r] indices into the n
            src, dst = taking_part.gather(1, src), taking_part.gather(1, dst)
            keep = torch.ones(batch, num_tokens, dtype=torch.bool, device=metric.device).scatter_(1, src, False)
            target = torch.full_like(keep, -1, dtype=torch.long).scatter_(1, src, dst)
            edge_score = torch.zeros(batch, num_tokens, device=metric.device).scatter_(1, src, score.float())
        return plan_from_assignment(keep, target, score=edge_score)

    def __repr__(self) -> str:
        if self.preset is not None:
            return f"{type(self).__name__}(preset={self.preset!r})"
        return f"{type(self).__name__}(margin={self.margin})"


def _match_by_rank(metric_sub: torch.Tensor, valid_sub: torch.Tensor | None, r: int):
    """ToMe's matching on tokens listed in energy order, A/B alternating by rank; the ``r`` A
    tokens with the most similar best B merge (with ``n = 2r`` tokens: every A).

    metric_sub: ``[B, n, C]``. Returns ``(src, dst, score)``, each ``[B, r]``, src/dst indexing
    the ``n`` tokens. With padding the A/B split differs per batch element (it alternates
    within each kind), so the elements are matched one by one.
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
    """tomviz's PiToMe for sentence encoders: [SEP] (the last real token) is merged only as a last resort."""

    name = "pitome_text"
    label = "PiToMe for text (tomviz's own adaptation, not the authors' code)"

    def mergeable_scores(self, inputs: MergeInputs, metric: torch.Tensor) -> torch.Tensor:
        scores = super().mergeable_scores(inputs, metric)
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
