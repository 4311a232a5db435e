"""Group pictures with exact answers on hand-made groups (no model)."""
import numpy as np
from PIL import Image

from tomviz.render.overlay import (
    boundary_mask, group_overlay, heatmap_overlay, patch_labels, patch_sums, pixel_labels,
    small_multiples,
)


def group_mean_colours(pixels: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """Per-pixel reference for group_overlay's fill: mean RGB of each group, ``pixels [H, W, 3]``,
    ``label_map [H, W]`` → ``[G, 3]`` (G = max id + 1).

    Pruned pixels (label -1) are ignored; groups with no pixel get black.
    """
    flat = label_map.reshape(-1)
    keep = flat >= 0
    num_groups = int(flat.max()) + 1 if keep.any() else 1
    counts = np.bincount(flat[keep], minlength=num_groups).astype(np.float64)  # [G]
    rgb = pixels.reshape(-1, 3)[keep].astype(np.float64)  # [P, 3]
    sums = np.stack([np.bincount(flat[keep], weights=rgb[:, c], minlength=num_groups) for c in range(3)], axis=1)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)  # [G, 3]


def _halves_image() -> Image.Image:
    """40×40: left half red, right half blue."""
    arr = np.zeros((40, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    return Image.fromarray(arr)


def test_patch_labels_drop_protected_tokens_and_reshape():
    groups = np.array([0, 5, 5, 6, 7])  # CLS + a 2×2 grid
    assert patch_labels(groups, (2, 2), 1).tolist() == [[5, 5], [6, 7]]


def test_pixel_labels_cover_the_picture_for_any_aspect():
    labels = np.array([[0, 1], [2, 3]])
    px = pixel_labels(labels, 4, 6)
    assert px.shape == (4, 6)
    assert px[0].tolist() == [0, 0, 0, 1, 1, 1] and px[3].tolist() == [2, 2, 2, 3, 3, 3]


def test_mean_colour_of_a_group_spanning_both_halves_is_the_average():
    image = _halves_image()
    groups = np.array([0, 1, 1, 2, 3])  # top row (red + blue) merged; bottom row alone
    out = np.asarray(group_overlay(image, groups, (2, 2), 1, opacity=1.0, outline=None, max_side=None))
    assert tuple(out[5, 5]) == tuple(out[5, 35]) == (128, 0, 128)  # mean of red and blue
    assert tuple(out[35, 5]) == (255, 0, 0) and tuple(out[35, 35]) == (0, 0, 255)


def test_group_means_from_patch_sums_equal_per_pixel_means_for_any_size():
    """group_overlay sums pixels per patch, then per group: the same picture as per-pixel means, also when
    patches get unequal pixel counts or none (a picture smaller than the grid)."""
    rng = np.random.default_rng(0)
    groups = np.concatenate([[0], rng.integers(-1, 6, 16)])  # CLS + a 4×4 grid, some patches pruned
    for height, width in ((37, 23), (9, 3), (4, 4), (2, 7)):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        pixels = np.asarray(image, dtype=np.float32)
        label_map = pixel_labels(patch_labels(groups, (4, 4), 1), height, width)
        fill = group_mean_colours(pixels, label_map)[np.maximum(label_map, 0)]
        fill[label_map < 0] = (40, 40, 40)
        expected = np.clip((1 - 0.7) * pixels + 0.7 * fill + 0.5, 0, 255).astype(np.uint8)
        expected[boundary_mask(label_map)] = 255
        assert np.array_equal(np.asarray(group_overlay(image, groups, (4, 4), 1, opacity=0.7, max_side=None)), expected)
        sums, counts = patch_sums(pixels, 4, 4)
        assert counts.sum() == height * width and np.allclose(sums.sum(0), pixels.reshape(-1, 3).sum(0))


def test_opacity_zero_shows_the_photo_and_outlines_mark_group_borders():
    image = _halves_image()
    groups = np.array([0, 1, 1, 2, 3])
    plain = np.asarray(group_overlay(image, groups, (2, 2), 1, opacity=0.0, outline=None, max_side=None))
    assert np.array_equal(plain, np.asarray(image))
    outlined = np.asarray(group_overlay(image, groups, (2, 2), 1, opacity=0.0, outline=(0, 255, 0), max_side=None))
    assert tuple(outlined[19, 5]) == (0, 255, 0)  # row boundary between the merged top and the bottom
    assert tuple(outlined[5, 19]) != (0, 255, 0)  # no boundary inside the merged top row


def test_boundary_mask_and_mean_colours_shapes():
    labels = np.array([[0, 0], [1, -1]])
    assert boundary_mask(labels).tolist() == [[True, True], [True, False]]  # right or lower neighbour differs
    means = group_mean_colours(np.ones((2, 2, 3)) * 10, labels)
    assert means.shape == (2, 3) and np.allclose(means, 10)


def test_heatmap_and_small_multiples_sizes():
    image = _halves_image()
    heat = heatmap_overlay(image, np.array([0.0, 1.0, np.nan, 0.5]), (2, 2), max_side=None)
    assert heat.size == image.size
    assert tuple(np.asarray(heat)[35, 5]) == (255, 0, 0)  # nan patch shows the photo
    sheet = small_multiples(image, [np.array([0, 1, 2, 3, 4])] * 3, (2, 2), 1, token_counts=[4, 3, 2], tile=20, columns=2)
    assert sheet.size[0] > 40 and sheet.mode == "RGB"
