"""The HBI picture: frames framed in their group's colour, words on their group's colour, a signed heat map."""
from __future__ import annotations

import numpy as np

from tomviz.render import video_hbi as render
from tomviz.render.groups import stable_colours


def test_each_frame_is_framed_in_its_groups_colour():
    frames = np.zeros((5, 20, 40, 3), dtype=np.uint8)
    groups = np.array([0, 1, 1, 2, 0])
    strip = np.asarray(render.frames_row(frames, groups))
    cell = round(render.THUMB * 40 / 20) + 2 * render.BORDER + render.GAP
    for t, g in enumerate(groups):
        x, y = render.GAP + t * cell + 1, render.GAP + 1  # inside the border, above the thumbnail
        np.testing.assert_array_equal(strip[y, x], stable_colours(np.array([g]))[0].astype(np.uint8))
        assert strip[y + render.THUMB // 2, x + 20].max() == 0  # the (black) frame itself


def test_heatmap_cells_are_red_when_positive_and_blue_when_negative():
    cross = np.array([[0.2, -0.2], [0.0, 0.1]])
    heat = np.asarray(render.interaction_heatmap(cross, np.full_like(cross, 0.01), ["frames 1", "frames 2"], ["a", "b"]))
    assert heat.shape[:2] == (44 + 2 * render.CELL[1] + render.GAP, 150 + 2 * render.CELL[0] + render.GAP)
    red, blue = heat[44 + 2, 150 + 2].astype(int), heat[44 + 2, 150 + render.CELL[0] + 2].astype(int)
    assert red[0] > red[2] + 50 and blue[2] > blue[0] + 50  # RdBu_r ends: dark red, dark blue


def test_the_whole_picture_stacks_strip_words_and_heatmap():
    frames = np.full((3, 16, 16, 3), 200, dtype=np.uint8)
    picture = render.video_hbi_picture(frames, np.array([0, 0, 1]), ["a", "cat"], np.array([0, 0]),
                                       np.array([[0.1], [-0.1]]), np.zeros((2, 1)), ["frames 1–2", "frames 3"], ["a · cat"])
    strip = render.frames_row(frames, np.array([0, 0, 1]))
    assert picture.height > strip.height + 2 * render.CELL[1] and picture.width >= strip.width
