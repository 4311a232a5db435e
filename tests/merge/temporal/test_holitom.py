"""HoliTom's outer stage, from the definitions in cokeshao/HoliTom (e9b2972) holitom/llava_arch.py."""
from __future__ import annotations

import math

import pytest
import torch

from tests.merge.temporal.clips import frames_of, groups_of, moving_square
from tomviz.merge.temporal.density import centre_blend, cluster_assignment, density_peak_centres
from tomviz.merge.temporal.holitom import holitom, select_static_windows, static_window_gain

# steps 0→1, 1→2, 2→3 for two positions; τ = 0.5: position 0 static throughout, position 1 breaks at 1→2
SIMILARITY = torch.tensor([[0.9, 0.9], [0.9, 0.1], [0.9, 0.9]])


def test_static_window_gain_hand_worked():
    gain = static_window_gain(SIMILARITY, 0.5)
    # gain[s, e] = positions static over s..e times (e - s)
    assert gain[0, 1] == 2 and gain[0, 2] == 2 and gain[0, 3] == 3
    assert gain[1, 2] == 1 and gain[1, 3] == 2 and gain[2, 3] == 2
    assert bool((gain.tril() == 0).all())


def test_dynamic_programming_hand_worked():
    # best(1) = 2 with [0,1]; best(2) stays 2 ([0,2] only ties: shorter wins); best(3) = best(1) + gain[2,3] = 4
    assert select_static_windows(SIMILARITY, 0.5) == ([(0, 1), (2, 3)], 4.0)
    assert select_static_windows(SIMILARITY, 0.5, max_window=1) == ([(0, 0), (1, 1), (2, 2), (3, 3)], 0.0)
    assert select_static_windows(SIMILARITY[:0], 0.5) == ([(0, 0)], 0.0)  # one frame


def test_density_peaks_hand_worked():
    x = torch.tensor([[0.0], [0.1], [0.3], [5.0], [5.2]])
    # k = 3 (itself included): mean squared distances 0.0333, 0.0167, 0.0433, 8.017, 8.683 → 0.1 is densest;
    # score = density x distance to the nearest denser point (0.1: the largest distance, 5.2)
    # → 0.1: 5.11, 0.3: 0.2 x 0.958 = 0.19, 0: 0.0967, 5: 4.7 x 3.3e-4, 5.2: 0.2 x 1.7e-4
    centres, dist = density_peak_centres(x, 2, 3)
    assert centres.tolist() == [1, 2]
    cluster = cluster_assignment(dist, centres)
    assert cluster.tolist() == [0, 0, 1, 1, 1]
    blended = centre_blend(x.double(), centres, cluster, 0.6)
    assert torch.allclose(blended.flatten(), torch.tensor([0.6 * 0.1 + 0.4 * 0.0, 0.6 * 0.3 + 0.4 * 5.1], dtype=torch.float64))


def test_static_background_merges_across_frames_moving_square_stays():
    clip = moving_square()
    reduction = holitom(clip.tokens, clip.attention, retain=0.3)
    reduction.validate()
    assert reduction.segments == ((0, 7),)  # 48 positions static over all 8 frames: 48 x 7 beats any split
    rescaled = 0.3 / ((512 - 48 * 7) / 512)
    assert reduction.num_kept == round(48 * rescaled) + 8 * math.ceil(16 * rescaled)
    square = clip.square.flatten()
    assert bool((reduction.group[square] >= 0).all()), "a square token was dropped"
    sizes = reduction.group_sizes()
    assert bool((sizes[reduction.group[square]] == 1).all()), "the moving square merged"
    ever_square = clip.square.any(dim=0)
    for members in groups_of(reduction):
        if not bool(ever_square[min(members) % 64]):
            assert frames_of(members, 64) == set(range(8)), "a static group does not span the window"


def test_segmentation_cuts_at_the_hard_cut():
    clip = moving_square(cut_at=4)
    reduction = holitom(clip.tokens, clip.attention, retain=0.3)
    reduction.validate()
    assert reduction.segments == ((0, 3), (4, 7))
    for members in groups_of(reduction):
        frames = frames_of(members, 64)
        assert max(frames) < 4 or min(frames) >= 4


def test_attention_shape_is_checked():
    with pytest.raises(ValueError, match="attention must be"):
        holitom(torch.randn(2, 4, 3), torch.rand(2, 5))
