"""The Image tab's handlers, called directly (no server, no browser), on the embedded DINOv2-S."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from tomviz.render.charts import SIZE
from tomviz.ui import image_tab as it

pytestmark = pytest.mark.slow  # the embedded dinov2-small

CAT = str(Path(__file__).resolve().parents[2] / "assets" / "chelsea.png")


class Click:  # what gr.SelectData carries for a click on an image: the pixel [x, y]
    def __init__(self, x: float, y: float):
        self.index = [x, y]


@pytest.fixture(scope="module")
def first():
    return it.inspect_image(CAT, ratio=0.5, layer=6)


def test_inspect_image_fills_every_output(first):
    trace = first.session.trace
    assert trace.token_counts()[0] == 257 and trace.token_counts()[-1] == 129
    assert first.overlay.size == first.heat.size == first.session.image.size
    assert first.strip.size[0] == 1380 and first.layer.maximum == 12 and first.layer.value == 6
    assert first.counts.size == first.gflops.size == SIZE  # pictures: a ratio change re-renders no plot
    assert first.summary["schedule"] == "constant" and "Cosine" in first.fidelity
    assert it.inspect_image(None).session is None  # no photo: every output empty


def test_layer_change_redraws_from_the_trace(first):
    early, late = it.render_image_layer(2, 0.8, first.session), it.render_image_layer(12, 0.8, first.session)
    assert early.overlay.size == late.overlay.size == first.overlay.size
    assert early.cluster.size == late.cluster.size == it.map_layout(first.session.trace).size
    assert not np.array_equal(np.asarray(early.overlay), np.asarray(late.overlay))
    assert it.render_image_layer(2, 0.8, None) == it.LayerViews(None, None, None)


def test_a_click_selects_the_patch_group_and_clear_drops_it(first):
    session = first.session
    width, height = session.image.size
    picked = it.select_patch(6, 0.8, session, Click(width / 2, height / 2))
    trace = session.trace
    rows, cols = trace.patch_grid
    assert picked.selected == trace.num_protected + (rows // 2) * cols + cols // 2  # the patch under the click
    assert "patch" in picked.lineage and picked.strip.size == first.strip.size
    assert not np.array_equal(np.asarray(picked.overlay), np.asarray(first.overlay))  # the group in magenta
    layout = it.strip_layout(session.image.size, trace.num_layers)
    in_strip = it.select_in_strip(6, 0.8, session, Click(layout.x(3) + 1, layout.y(3) + 1))  # layer 4's first patch
    assert in_strip.selected == trace.num_protected
    between = it.select_in_strip(6, 0.8, session, Click(0, 0))  # the gap before the first tile
    assert all(isinstance(value, type(gr.skip())) for value in between)
    grid = it.map_layout(trace)  # the cluster map: cells of grid.cell pixels
    on_map = it.select_on_map(6, 0.8, session, Click(2.5 * grid.cell, 1.5 * grid.cell))  # row 1, column 2 (0-based)
    assert on_map.selected == trace.num_protected + cols + 2 and on_map.cluster.size == grid.size
    caption = it.select_on_map(6, 0.8, session, Click(1, grid.rows * grid.cell + 2))
    assert all(isinstance(value, type(gr.skip())) for value in caption)
    cleared = it.clear_selection(6, 0.8, session)
    assert cleared.selected is None and cleared.lineage == it.LINEAGE_HINT


def test_tab_builds_with_its_endpoints():
    with gr.Blocks() as demo:
        it.build_image_tab(demo)
    names = {dep.api_name for dep in demo.fns.values()}
    assert {"inspect_image", "render_image_layer", "image_downloads", "image_animation", "open_page"} <= names


def test_animation_comes_as_a_gif_and_an_mp4_of_the_same_frames(first):
    import av
    from PIL import Image

    gif, mp4 = it.image_animation(first.session)
    assert Path(gif).name == "merge_tome_ratio0.5.gif" and Path(mp4).name == "merge_tome_ratio0.5.mp4"
    frames = first.session.trace.num_layers + 1  # the input, then one per layer
    with Image.open(gif) as picture:
        assert picture.n_frames == frames
    with av.open(mp4) as video:
        assert sum(1 for _ in video.decode(video=0)) == frames
