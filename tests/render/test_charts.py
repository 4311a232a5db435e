"""tomviz/render/charts.py: the token-count and GFLOPs pictures, read back pixel by pixel."""
from __future__ import annotations

import numpy as np

from tomviz.render.charts import LINE, MERGED, SIZE, UNMERGED, gflops_picture, nice_ticks, token_count_picture
from tomviz.trace import LayerTrace, Trace


def _trace(counts: list[int]) -> Trace:
    layers = []
    for n_in, n_out in zip(counts, counts[1:]):
        layers.append(LayerTrace(source=np.minimum(np.arange(n_in), n_out - 1).astype(np.int32),
                                 sizes=np.ones(n_out, np.float32), num_tokens_in=n_in))
    return Trace(meta={"num_input_tokens": counts[0], "num_protected": 1}, layers=layers)


def _has(picture, colour) -> np.ndarray:
    """``[H, W]`` bool: pixels of exactly ``colour``."""
    return (np.asarray(picture) == np.asarray(colour, dtype=np.uint8)).all(-1)


def test_nice_ticks_are_round_and_cover_the_top():
    assert nice_ticks(257) == [0, 100, 200, 300]
    assert nice_ticks(1.02) == [0, 0.5, 1.0, 1.5]
    assert nice_ticks(0) == [0.0, 1.0]


def test_token_count_line_falls_from_left_to_right():
    picture = token_count_picture(_trace([9, 7, 5, 3]))
    assert picture.size == SIZE
    ys, xs = np.nonzero(_has(picture, LINE))
    left, right = ys[xs < xs.min() + 5].mean(), ys[xs > xs.max() - 5].mean()
    assert right > left + 50  # fewer tokens at the end: lower in the picture


def test_gflops_bars_are_as_tall_as_their_values():
    picture = gflops_picture([0.5, 0.25], [1.0, 1.0])
    unmerged, merged = _has(picture, UNMERGED), _has(picture, MERGED)
    height = lambda mask, half: np.count_nonzero(mask[:, :SIZE[0] // 2].any(1) if half == 0 else mask[:, SIZE[0] // 2:].any(1))  # noqa: E731
    legend_rows = 11  # the legend's swatch (10 px + its outline row) has each colour too
    u1, m1, m2 = height(unmerged, 0) - legend_rows, height(merged, 0) - legend_rows, height(merged, 1)
    assert abs(m1 - u1 / 2) <= 2 and abs(m2 - u1 / 4) <= 2, (u1, m1, m2)
