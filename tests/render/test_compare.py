"""The difference map of two settings' groups, on hand-made group arrays with answers worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tomviz.fidelity import EmbeddingFidelity
from tomviz.speed import SpeedReport
from tomviz.render.compare import (comparison_figure, comparison_table, difference_overlay, difference_stats,
                                   difference_tokens, jaccard_distance)


def test_identical_groups_have_distance_zero():
    groups = np.array([0, 1, 1, 2, 2, 2])
    assert jaccard_distance(groups, groups).tolist() == [0.0] * 6


def test_relabelled_groups_are_the_same_partition():
    a = np.array([0, 1, 1, 2, 2])
    b = np.array([0, 2, 2, 1, 1])  # same sets, other ids
    assert jaccard_distance(a, b).tolist() == [0.0] * 5


def test_split_and_merge_by_hand():
    # A: {0} {1,2,3} {4}      B: {0} {1,2} {3,4}
    a = np.array([0, 1, 1, 1, 2])
    b = np.array([0, 1, 1, 2, 2])
    d = jaccard_distance(a, b)
    # token 1: A {1,2,3}, B {1,2} → 1 - 2/3;  token 3: A {1,2,3}, B {3,4} → 1 - 1/4;  token 4: A {4}, B {3,4} → 1 - 1/2
    np.testing.assert_allclose(d, [0.0, 1 / 3, 1 / 3, 3 / 4, 1 / 2])


def test_pruned_tokens():
    a = np.array([0, -1, -1, 1, 1])
    b = np.array([0, -1, 1, 1, 2])
    d = jaccard_distance(a, b)
    # token 1 pruned in both → 0; token 2 pruned in A only → 1; token 3: A {3,4}, B {2,3} but 2 is pruned in A:
    # the sets are {3,4} and {2,3} → 1 - 1/3; token 4: A {3,4}, B {4} → 1 - 1/2
    np.testing.assert_allclose(d, [0.0, 0.0, 1.0, 2 / 3, 1 / 2])


def test_all_pruned_and_shape_mismatch():
    assert jaccard_distance(np.array([-1, -1]), np.array([-1, 0])).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="different inputs"):
        jaccard_distance(np.zeros(3, int), np.zeros(4, int))


def test_matches_a_direct_set_computation():
    rng = np.random.default_rng(0)
    a, b = rng.integers(-1, 6, 60), rng.integers(-1, 9, 60)
    expected = []
    for i in range(60):
        if a[i] < 0 or b[i] < 0:
            expected.append(float((a[i] < 0) != (b[i] < 0)))
            continue
        sa, sb = set(np.flatnonzero(a == a[i])), set(np.flatnonzero(b == b[i]))
        expected.append(1 - len(sa & sb) / len(sa | sb))
    np.testing.assert_allclose(jaccard_distance(a, b), expected)


def test_stats_overlay_tokens_and_figures():
    d = np.array([0.0, 0.5, 0.0, 1.0])
    assert difference_stats(d) == {"changed": 0.5, "mean": 0.375}
    # 1 protected token + a 1×3 grid; fixed 0..1 scale: a distance-0 patch keeps the darkest colour
    image = Image.new("RGB", (30, 10), (128, 128, 128))
    out = np.asarray(difference_overlay(image, d, (1, 3), num_protected=1, opacity=1.0))
    assert out.shape == (10, 30, 3)
    assert out[5, 15].sum() < out[5, 5].sum() < out[5, 25].sum()  # 0 < 0.5 < 1
    assert difference_tokens(["[CLS]", "the", "##re"], np.array([0.0, 0.25, 1.0])) == [
        ("[CLS]", None), (" the", 0.25), ("re", 1.0)]
    fig = comparison_figure(["A", "B"], [0.99, 0.9], [10.0, 12.0], 20.0, [5.0, 6.0], 10.0)
    assert len(fig.data) == 3
    changed = EmbeddingFidelity("cls", 0.9, top_merged=[("cat", 0.5)], top_unmerged=[("dog", 0.4)])
    no_classes = EmbeddingFidelity("cls", 0.99)
    speed = SpeedReport(merged_s=0.010, unmerged_s=0.020, merged_gflops=[0.25, 0.75])
    assert comparison_table(["A", "B"], [changed, no_classes], [speed, speed], [5, 7]) == [
        ["A", 5, 0.9, "no", 10.0, 2.0, 1.0], ["B", 7, 0.99, "", 10.0, 2.0, 1.0]]
