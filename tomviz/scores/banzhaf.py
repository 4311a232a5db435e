"""Banzhaf values of merged tokens: the groups after one layer as players of a game.

The game (:mod:`tomviz.scores.game`) runs the layers after ``layer`` with only a coalition's
groups present and reads the model's target (:mod:`tomviz.scores.targets`): a class logit,
a cosine to the unmerged embedding, or CLIP's image–text similarity. Estimation (exact or
MSR sampling): :mod:`tomviz.scores.estimate`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from tomviz.scores.estimate import GameEstimate, Progress, banzhaf_game
from tomviz.scores.game import chunk_size, model_game
from tomviz.scores.targets import Inspected
from tomviz.trace import Trace, pixel_labels


@dataclass
class GroupScores(GameEstimate):
    """An estimated game whose players include the groups after ``layer`` of ``trace``.

    ``groups[k]`` is the group id (token index after ``layer``, as in ``trace.groups(layer)``) of
    the k-th group that plays; protected tokens (CLS & co.) never play.
    """

    target: str  # what was measured
    layer: int
    trace: Trace
    groups: np.ndarray  # [n_groups] int group ids at ``layer``

    @property
    def num_groups(self) -> int:
        return int(self.groups.shape[0])

    @classmethod
    def from_estimate(cls, est: GameEstimate, **more: Any) -> "GroupScores":
        return cls(**{f.name: getattr(est, f.name) for f in fields(GameEstimate)}, **more)


@dataclass
class BanzhafResult(GroupScores):
    """Banzhaf values of the n groups after ``layer``, which are the game's players (protected tokens
    excluded): ``values``/``stderr`` are ``[n]``, ``interactions[k1, k2]`` ``[n, n]``, in ``groups`` order.
    """

    sizes: np.ndarray  # [n] input tokens in each group

    def per_group(self) -> np.ndarray:
        """``[N_l]``: the value of every token after ``layer`` (protected tokens: nan)."""
        return self.trace.per_group(self.layer, self.groups, self.values)

    def to_tokens(self, share: bool = False) -> np.ndarray:
        """``[N0]``: each input token gets its group's value (``share=True``: value / group size);
        protected and pruned tokens are nan."""
        per_group = self.per_group()
        if share:
            per_group = per_group / self.trace.sizes(self.layer)
        return self.trace.spread(per_group, self.layer)

    def to_grid(self, share: bool = False) -> np.ndarray:
        """``[rows, cols]``: :meth:`to_tokens` on the patch grid (image models)."""
        return self.trace.on_patch_grid(self.to_tokens(share)).astype(np.float32)

    def to_pixels(self, height: int, width: int, share: bool = False) -> np.ndarray:
        """``[height, width]``: :meth:`to_grid` at the resolution of a picture of the input (image models)."""
        return pixel_labels(self.to_grid(share), height, width)

    def top_pairs(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` strongest interactions by magnitude: (k1, k2, interaction), indices into ``groups``."""
        return top_pairs(self.interactions, k)


def top_pairs(interactions: np.ndarray, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` largest ``|interactions[i, j]|`` with i < j: list of (i, j, value)."""
    n = interactions.shape[0]
    iu, ju = np.triu_indices(n, 1)
    vals = np.nan_to_num(interactions[iu, ju])
    order = np.argsort(-np.abs(vals))[:k]
    return [(int(iu[o]), int(ju[o]), float(vals[o])) for o in order]


def banzhaf(
    result: Inspected,
    layer: int,
    samples: int = 512,
    exact: bool = False,
    seed: int = 0,
    target: Any = None,
    progress: Progress | None = None,
) -> BanzhafResult:
    """Banzhaf values and pairwise interactions of the groups after ``layer``.

    result: ``tomviz.inspect(..., keep_hidden=True)``. target: None (the default for the model:
    predicted class / cosine to the unmerged embedding), a class index or label (classifiers),
    or a prompt (CLIP). exact: enumerate all 2ⁿ coalitions (n ≤ 12); otherwise MSR over
    ``samples`` coalitions drawn with ``seed``. progress(fraction, message) after each batch.
    """
    game = model_game(result, layer, target)
    est = banzhaf_game(game, len(game.groups), samples=samples, exact=exact, seed=seed, chunk=chunk_size(result, game.layer), progress=progress)
    trace = game.result.trace
    return BanzhafResult.from_estimate(
        est, target=game.target, layer=game.layer, trace=trace, groups=game.groups,
        sizes=np.asarray(trace.sizes(game.layer))[game.groups],
    )
