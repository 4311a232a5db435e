"""Banzhaf values and pairwise interactions of a cooperative game: MSR sampling or exact enumeration.

Definitions (Banzhaf 1965; the interaction index of Grabisch & Roubens 1999), for n players and a value function v:

* value of i: φᵢ = mean of v(S) over S ∋ i − mean of v(S) over S ∌ i, S uniform over all subsets;
* interaction of (i, j): I_ij = m₁₁ − m₁₀ − m₀₁ + m₀₀, where m_ab is the mean of v(S) over the
  subsets with i's membership a and j's membership b.

Over *all* 2ⁿ subsets these means are the exact Banzhaf value and interaction; over m uniform
random subsets they are the maximum-sample-reuse (MSR) estimator of Wang & Jia (2023): every
evaluation serves every player and every pair. The model knows nothing of games: a game is a
batched value function ``[M, n] bool → [M]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

ValueFn = Callable[[np.ndarray], np.ndarray]  # coalitions [M, n] bool → values [M] float
Progress = Callable[[float, str], None]  # (fraction done, message)

EXACT_LIMIT = 12  # exact enumeration costs 2**n evaluations


@dataclass
class GameEstimate:
    """Banzhaf values of one game and the evidence behind them (n players, m evaluations)."""

    values: np.ndarray  # [n] float64
    stderr: np.ndarray  # [n] float64; 0 when exact
    interactions: np.ndarray  # [n, n] float64, symmetric, 0 on the diagonal
    interactions_stderr: np.ndarray  # [n, n] float64; 0 when exact
    samples: int  # evaluations of the value function (2**n when exact)
    exact: bool
    seed: int | None  # None when exact
    empty_value: float  # v(∅)  (evaluated separately for MSR: one more evaluation)
    full_value: float  # v(all players)


def coalitions(n: int, samples: int = 512, exact: bool = False, seed: int = 0) -> np.ndarray:
    """The coalitions a game is evaluated on: ``[2**n, n]`` (exact) or ``[samples, n]`` uniform, bool.

    Each uniform coalition holds each player independently with probability ½.
    """
    if n < 1:
        raise ValueError("a game needs at least one player")
    if exact:
        if n > EXACT_LIMIT:
            raise ValueError(
                f"exact Banzhaf values enumerate 2**n coalitions: {n} players is too many (limit {EXACT_LIMIT}); "
                "use exact=False with a number of samples"
            )
        codes = np.arange(2**n)[:, None]  # [2**n, 1]
        return ((codes >> np.arange(n)[None, :]) & 1).astype(bool)  # [2**n, n]
    if samples < 4:
        raise ValueError(f"samples must be at least 4 (got {samples})")
    rng = np.random.default_rng(seed)
    return rng.random((samples, n)) < 0.5


def evaluate(value_fn: ValueFn, masks: np.ndarray, chunk: int = 512, progress: Progress | None = None) -> np.ndarray:
    """Values of ``masks`` ``[M, n]`` in chunks of ``chunk`` coalitions → ``[M]`` float64."""
    out = np.empty(masks.shape[0], dtype=np.float64)
    chunk = max(1, int(chunk))
    for start in range(0, masks.shape[0], chunk):
        stop = min(start + chunk, masks.shape[0])
        out[start:stop] = np.asarray(value_fn(masks[start:stop]), dtype=np.float64).reshape(-1)
        if progress is not None:
            progress(stop / masks.shape[0], f"{stop}/{masks.shape[0]} coalitions")
    return out


def from_values(masks: np.ndarray, v: np.ndarray, exact: bool) -> tuple[np.ndarray, ...]:
    """Banzhaf values, interactions and their standard errors from evaluated coalitions.

    masks: ``[M, n]`` bool; v: ``[M]``. Returns (values [n], stderr [n], interactions [n, n],
    interactions_stderr [n, n]). A player (pair cell) never seen in or out gives nan.
    """
    x = masks.astype(np.float64)  # [M, n]
    y = 1.0 - x
    v = v.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        # players: mean in − mean out
        n_in, n_out = x.sum(0), y.sum(0)  # [n]
        m_in, m_out = (v @ x) / n_in, (v @ y) / n_out
        values = m_in - m_out
        q_in, q_out = (v**2 @ x), (v**2 @ y)
        var_in = (q_in - n_in * m_in**2) / (n_in - 1)
        var_out = (q_out - n_out * m_out**2) / (n_out - 1)
        stderr = np.sqrt(np.clip(var_in, 0, None) / n_in + np.clip(var_out, 0, None) / n_out)
        # pairs: the four membership cells of (i, j)
        inter = np.zeros((x.shape[1], x.shape[1]))
        var_sum = np.zeros_like(inter)
        for a, b, sign in ((x, x, 1.0), (x, y, -1.0), (y, x, -1.0), (y, y, 1.0)):
            count = a.T @ b  # [n, n]
            mean = (a * v[:, None]).T @ b / count
            sq = (a * (v**2)[:, None]).T @ b
            inter += sign * mean
            var_sum += np.clip((sq - count * mean**2) / (count - 1), 0, None) / count
    np.fill_diagonal(inter, 0.0)
    inter_se = np.sqrt(var_sum)
    np.fill_diagonal(inter_se, 0.0)
    if exact:
        stderr = np.zeros_like(values)
        inter_se = np.zeros_like(inter)
    return values, stderr, inter, inter_se


def banzhaf_game(
    value_fn: ValueFn,
    n: int,
    samples: int = 512,
    exact: bool = False,
    seed: int = 0,
    chunk: int = 512,
    progress: Progress | None = None,
) -> GameEstimate:
    """Banzhaf values and interactions of the game ``value_fn`` over ``n`` players.

    exact: enumerate all 2ⁿ coalitions (n ≤ 12); otherwise MSR over ``samples`` uniform
    coalitions drawn with ``seed``. ``chunk`` coalitions go to ``value_fn`` per call.
    """
    masks = coalitions(n, samples=samples, exact=exact, seed=seed)  # [M, n]
    ends = np.stack([np.zeros(n, bool), np.ones(n, bool)])  # [2, n]: ∅ and all players
    if exact:
        v = evaluate(value_fn, masks, chunk, progress)
        empty, full = float(v[0]), float(v[-1])  # codes 0 and 2**n - 1
    else:
        v = evaluate(value_fn, np.concatenate([masks, ends]), chunk, progress)
        v, (empty, full) = v[:-2], v[-2:]
    values, stderr, inter, inter_se = from_values(masks, v, exact)
    return GameEstimate(
        values=values, stderr=stderr, interactions=inter, interactions_stderr=inter_se,
        samples=int(masks.shape[0]), exact=exact, seed=None if exact else seed,
        empty_value=float(empty), full_value=float(full),
    )
