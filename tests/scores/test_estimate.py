"""Banzhaf estimation on synthetic games whose values are known exactly."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from tomviz.scores.estimate import banzhaf_game, coalitions


def majority3(masks: np.ndarray) -> np.ndarray:
    """3 players, v(S) = 1 when |S| ≥ 2."""
    return (masks.sum(1) >= 2).astype(float)


def test_three_player_games_by_hand():
    # majority, v(S) = 1 when |S| ≥ 2:
    # φ_i = ¼ [(v{i}-v∅) + (v{ij}-v{j}) + (v{ik}-v{k}) + (v{ijk}-v{jk})] = ¼ [0 + 1 + 1 + 0] = ½
    # I_ij = ½ [(v{ij}-v{i}-v{j}+v∅) + (v{ijk}-v{ik}-v{jk}+v{k})] = ½ [1 - 1] = 0
    est = banzhaf_game(majority3, 3, exact=True)
    np.testing.assert_allclose(est.values, [0.5, 0.5, 0.5])
    np.testing.assert_allclose(est.interactions, np.zeros((3, 3)), atol=1e-12)
    assert est.empty_value == 0 and est.full_value == 1 and est.samples == 8
    np.testing.assert_array_equal(est.stderr, 0)
    # unanimity, v(S) = 1 only for S = {1, 2, 3}: φ_i = ¼ · 1, I_ij = ½ · (v{ijk} - 0 - 0 + 0) = ½
    est = banzhaf_game(lambda m: m.all(1).astype(float), 3, exact=True)
    np.testing.assert_allclose(est.values, [0.25, 0.25, 0.25])
    np.testing.assert_allclose(est.interactions, [[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def test_three_player_with_product_term():
    # v = x1 + 2·x2 + 3·x1·x3 → φ = (1 + 3/2, 2, 3/2), I_13 = 3, other pairs 0
    def v(m):
        x = m.astype(float)
        return x[:, 0] + 2 * x[:, 1] + 3 * x[:, 0] * x[:, 2]

    est = banzhaf_game(v, 3, exact=True)
    np.testing.assert_allclose(est.values, [2.5, 2.0, 1.5])
    np.testing.assert_allclose(est.interactions, [[0, 0, 3], [0, 0, 0], [3, 0, 0]], atol=1e-12)


def _definition(v, n):
    """Banzhaf values and interactions straight from the sums over subsets (Banzhaf 1965; Grabisch & Roubens 1999)."""
    def val(s):
        m = np.zeros((1, n), bool)
        m[0, list(s)] = True
        return float(v(m)[0])

    phi = np.zeros(n)
    inter = np.zeros((n, n))
    for i in range(n):
        rest = [p for p in range(n) if p != i]
        for k in range(n):
            for s in itertools.combinations(rest, k):
                phi[i] += val(s + (i,)) - val(s)
        phi[i] /= 2 ** (n - 1)
    for i, j in itertools.combinations(range(n), 2):
        rest = [p for p in range(n) if p not in (i, j)]
        total = 0.0
        for k in range(n - 1):
            for s in itertools.combinations(rest, k):
                total += val(s + (i, j)) - val(s + (i,)) - val(s + (j,)) + val(s)
        inter[i, j] = inter[j, i] = total / 2 ** (n - 2)
    return phi, inter


def test_exact_matches_definition_on_a_nonlinear_game():
    rng = np.random.default_rng(3)
    w = rng.normal(size=5)

    def v(m):
        x = m.astype(float)
        return np.tanh(x @ w) + x[:, 1] * x[:, 3] * x[:, 4]

    est = banzhaf_game(v, 5, exact=True)
    phi, inter = _definition(v, 5)
    np.testing.assert_allclose(est.values, phi, atol=1e-12)
    np.testing.assert_allclose(est.interactions, inter, atol=1e-12)


def test_additive_game_msr_within_three_stderr():
    w = np.linspace(-1, 2, 16)
    est = banzhaf_game(lambda m: m.astype(float) @ w, 16, samples=2000, seed=1)
    assert np.all(np.abs(est.values - w) <= 3 * est.stderr)
    assert est.samples == 2000 and not est.exact


def test_pairwise_interaction_game():
    n, (a, b), c = 10, (2, 7), 4.0
    w = np.arange(n, dtype=float) / 10

    def v(m):
        x = m.astype(float)
        return x @ w + c * x[:, a] * x[:, b]

    exact = banzhaf_game(v, n, exact=True)
    expected = w.copy()
    expected[[a, b]] += c / 2
    np.testing.assert_allclose(exact.values, expected, atol=1e-12)
    inter = np.zeros((n, n))
    inter[a, b] = inter[b, a] = c
    np.testing.assert_allclose(exact.interactions, inter, atol=1e-12)

    est = banzhaf_game(v, n, samples=4000, seed=0)
    assert np.all(np.abs(est.values - expected) <= 3 * est.stderr)
    assert abs(est.interactions[a, b] - c) <= 3 * est.interactions_stderr[a, b]
    off = ~np.eye(n, dtype=bool)
    within = np.abs(est.interactions - inter)[off] <= 3 * est.interactions_stderr[off]
    assert within.mean() >= 0.95
    # the known pair stands out from every other pair
    top = np.unravel_index(np.argmax(np.abs(np.triu(est.interactions, 1))), (n, n))
    assert set(top) == {a, b}


def test_error_shrinks_with_samples():
    rng = np.random.default_rng(0)
    w = rng.normal(size=12)

    def v(m):
        x = m.astype(float)
        return x @ w + 2 * x[:, 0] * x[:, 1] - x[:, 3] * x[:, 5] * x[:, 6]

    exact = banzhaf_game(v, 12, exact=True)
    errors = []
    for samples in (64, 256, 1024):
        rmse = [np.sqrt(np.mean((banzhaf_game(v, 12, samples=samples, seed=s).values - exact.values) ** 2)) for s in range(20)]
        errors.append(np.mean(rmse))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < errors[0] / 2.5  # ~1/sqrt(m): a factor 4 expected from 16x samples


def test_seed_reproducible_and_coalitions_uniform():
    a = coalitions(8, samples=100, seed=5)
    np.testing.assert_array_equal(a, coalitions(8, samples=100, seed=5))
    assert not np.array_equal(a, coalitions(8, samples=100, seed=6))
    assert abs(coalitions(8, samples=20000, seed=0).mean() - 0.5) < 0.01


def test_exact_limit_and_bad_samples():
    with pytest.raises(ValueError, match="too many"):
        coalitions(13, exact=True)
    with pytest.raises(ValueError, match="at least"):
        coalitions(5, samples=2)


def test_chunks_and_progress():
    calls = []
    seen = []

    def v(m):
        calls.append(m.shape[0])
        return m.sum(1)

    est = banzhaf_game(v, 4, samples=100, chunk=30, progress=lambda f, msg: seen.append(f))
    assert max(calls) <= 30 and sum(calls) == 102  # + the empty and full coalitions
    assert seen[-1] == 1.0
    assert est.full_value == 4 and est.empty_value == 0
