"""Figures and text views (tomviz/render/figures.py, text.py) on a hand-made trace."""
import numpy as np
import pytest

from tomviz.render.figures import cluster_map_figure, gflops_figure, group_attention_figure, token_count_figure
from tomviz.render.text import group_names, group_table, token_highlights
from tomviz.trace import LayerTrace, Trace


@pytest.fixture
def text_trace() -> Trace:
    """CLS + 4 tokens; layer 0 merges 'the'(3) into 'the'(1); layer 1 merges 'sat' into that group."""
    meta = {"tokens": ["[CLS]", "the", "cat", "the", "sat"], "num_input_tokens": 5, "num_protected": 1,
            "patch_grid": [2, 2]}
    l0 = LayerTrace(source=np.array([0, 1, 2, 1, 3], np.int32), sizes=np.array([1, 2, 1, 1], np.float32),
                    num_tokens_in=5, cls_attention=np.array([0.2, 0.3, 0.1, 0.2, 0.2], np.float32))
    l1 = LayerTrace(source=np.array([0, 1, 2, 1, 1], np.int32), sizes=np.array([1, 3, 1], np.float32),
                    num_tokens_in=4, cls_attention=np.array([0.1, 0.5, 0.2, 0.2], np.float32))
    return Trace(meta=meta, layers=[l0, l1])


def test_token_highlights_share_a_label_within_a_group(text_trace):
    pieces = token_highlights(text_trace, 1)
    assert [p[0] for p in pieces] == ["[CLS]", " the", " cat", " the", " sat"]
    assert pieces[1][1] == pieces[3][1] == pieces[4][1] == "group 1 (3 tokens)"
    assert pieces[0][1] is None and pieces[2][1] is None


def test_group_table_and_names(text_trace):
    assert group_table(text_trace, 1)[0] == [1, 3, "the · the · sat"]
    assert group_names(text_trace, 1, entering=True) == ["g0: [CLS]", "g1: the · the", "g2: cat", "g3: sat"]


def test_figures_build(text_trace):
    fig = cluster_map_figure(text_trace, 1)
    assert fig.data[0].customdata.shape == (2, 2, 3)
    assert fig.data[0].customdata[0, 0].tolist() == ["1", "3", "1"]  # group 1, size 3, joined at layer 1
    assert list(token_count_figure(text_trace).data[0].y) == [5, 4, 3]
    unmerged, merged = gflops_figure([1.0, 0.5], [1.0, 1.0]).data
    assert (unmerged.name, list(unmerged.y)) == ("unmerged (2.00 total)", [1.0, 1.0])
    assert (merged.name, list(merged.y), list(merged.x)) == ("merged (1.50 total)", [1.0, 0.5], [1, 2])
    bars = group_attention_figure(["a", "b", "c"], [0.3, 0.7, 0.1], 0).data[0]
    assert list(bars.y) == ["c", "a", "b"] and list(bars.x) == [0.1, 0.3, 0.7]  # the largest drawn on top


@pytest.mark.parametrize("height", [240, 300, 420])
def test_gflops_legend_sits_under_the_axis_title_inside_the_figure(height):
    layout = gflops_figure([1.0, 0.5], [1.0, 1.0], height=height).layout
    plot_height = height - layout.margin.t - layout.margin.b
    legend_top = -layout.legend.y * plot_height  # px below the x axis
    assert layout.legend.yanchor == "top" and layout.legend.orientation == "h"
    assert legend_top >= 45  # below the tick labels (≈ 15 px) and the axis title (≈ 20 px more)
    assert legend_top + 22 <= layout.margin.b  # one legend row still inside the figure
