"""Lineage, readable cluster pictures, the strip and the animation on a hand-made trace."""
import numpy as np
import pytest
from PIL import Image

from tomviz.lineage import group_lineage
from tomviz.render.figures import cluster_map_figure
from tomviz.render.groups import (
    HIGHLIGHT, OUTLINE, animation_frames, cluster_map_picture, cluster_picture, layer_strip_picture, map_colours,
    map_layout, patch_groups, patch_name, save_animation, save_video, stable_colours, strip_layout, strip_token_at, token_at,
)
from tomviz.render.lineage import lineage_markdown
from tomviz.trace import LayerTrace, Trace


@pytest.fixture
def trace() -> Trace:
    """CLS + a 2×2 grid. Layer 0 merges patch token 3 into 1 (0.9); layer 1 merges the token holding
    input 4 into the one holding 1 and 3 (0.8)."""
    meta = {"num_input_tokens": 5, "num_protected": 1, "patch_grid": [2, 2]}
    l0 = LayerTrace(source=np.array([0, 1, 2, 1, 3], np.int32), sizes=np.array([1, 2, 1, 1], np.float32), num_tokens_in=5,
                    edges_src=np.array([3], np.int32), edges_dst=np.array([1], np.int32), edges_score=np.array([0.9], np.float32))
    l1 = LayerTrace(source=np.array([0, 1, 2, 1, 1], np.int32), sizes=np.array([1, 3, 1], np.float32), num_tokens_in=4,
                    edges_src=np.array([3], np.int32), edges_dst=np.array([1], np.int32), edges_score=np.array([0.8], np.float32))
    return Trace(meta=meta, layers=[l0, l1])


def test_lineage_by_hand(trace):
    lin = group_lineage(trace, 4)
    assert lin.members.tolist() == [1, 3, 4] and lin.layer == 1
    assert lin.joined.tolist() == [0, 0, 1]
    np.testing.assert_allclose(lin.similarity, [0.9, 0.9, 0.8], rtol=1e-6)
    assert lin.reached.tolist() == [1, 1, -1]  # inputs 1 and 3 reach input 4's group in layer 1
    np.testing.assert_allclose(lin.reached_similarity[:2], [0.8, 0.8], rtol=1e-6)
    assert [(e.layer, e.merged, e.into) for e in lin.events] == [(0, (3,), (1,)), (1, (4,), (1, 3))]
    assert group_lineage(trace, 2).members.tolist() == [2]
    assert group_lineage(trace, 1, layer=0).members.tolist() == [1, 3]
    with pytest.raises(IndexError):
        group_lineage(trace, 9)
    names = [patch_name(trace, t) for t in range(5)]
    text = lineage_markdown(lin, names)
    assert "group of **3 patches**" in text and "| patch (2, 1) | 2 | 0.800 | 1 | patch (1, 1) | 0.900 |" in text
    assert "still alone" in lineage_markdown(group_lineage(trace, 2), names)


def test_cluster_picture_greys_single_patches_and_highlights_the_selection(trace):
    image = Image.new("RGB", (40, 40), (0, 200, 0))
    plain = np.asarray(cluster_picture(image, patch_groups(trace, 1), max_side=None)).astype(int)
    assert len(set(plain[10, 30].tolist())) == 1  # token 2, patch (1, 2), still alone: grey
    assert len(set(plain[30, 10].tolist())) > 1  # token 3, in a merged group: tinted
    sel = np.asarray(cluster_picture(image, patch_groups(trace, 1, token=4), max_side=None)).astype(int)
    centre = {t: (10 + 20 * ((t - 1) // 2), 10 + 20 * ((t - 1) % 2)) for t in range(1, 5)}  # (y, x)
    for t in (1, 3, 4):
        r, g, b = sel[centre[t]]
        assert r - g > 100 and b - g > 100, t  # magenta-ish
    r, g, b = sel[centre[2]]
    assert r == g == b  # grey


def test_strip_layout_and_clicks(trace):
    image = Image.new("RGB", (60, 40), (120, 60, 30))
    strip = layer_strip_picture(image, trace, token=4, current=1, width=300, columns=2)
    layout = strip_layout(image.size, 2, width=300, columns=2)
    assert strip.size == layout.size
    pixels = np.asarray(strip).astype(int)
    for l in range(2):
        members = trace.groups(l) == trace.groups(l)[4]
        for t in range(1, 5):
            row, col = divmod(t - 1, 2)
            x = layout.x(l) + int((col + 0.5) * layout.tile_w / 2)
            y = layout.y(l) + int((row + 0.5) * layout.tile_h / 2)
            r, g, b = pixels[y, x]
            assert (r - g > 60 and b - g > 60) == bool(members[t]), (l, t)
            assert strip_token_at(layout, trace, x, y) == (l, t)
    assert strip_token_at(layout, trace, 0, 0) is None
    assert token_at(trace, 0.99, 0.99) == 4


def test_cluster_map_title_counts_merged_groups(trace):
    fig = cluster_map_figure(trace, 1, token=4)
    assert "1 merged groups" in fig.layout.title.text
    assert fig.data[0].z[0][0].tolist() == list(HIGHLIGHT)


def test_cluster_map_picture_cells_outlines_caption_and_clicks(trace):
    layout = map_layout(trace, side=100)  # a 2x2 grid: 50 px cells, then the caption band
    assert (layout.cell, layout.size) == (50, (100, 100 + layout.caption))
    picture = cluster_map_picture(trace, 0, side=100)
    assert picture.size == layout.size
    pixels = np.asarray(picture).astype(int)
    stable = patch_groups(trace, 0).stable  # [[1, 2], [1, 4]]: inputs 1 and 3 merged in layer 0
    for t in range(1, 5):
        row, col = divmod(t - 1, 2)
        centre = pixels[row * 50 + 25, col * 50 + 25]
        expected = stable_colours(np.array([stable[row, col]]))[0] if t in (1, 3) else np.full(3, 228.0)
        assert np.abs(centre - expected).max() <= 1, t  # merged: the group's stable colour; alone: light grey
        assert layout.token_at(trace, col * 50 + 25, row * 50 + 25) == t
    assert pixels[25, 49].tolist() == list(OUTLINE)  # between the merged group (left) and patch 2 (right)
    assert pixels[49, 25].tolist() != list(OUTLINE)  # inside the merged group (inputs 1 and 3): no line
    assert layout.token_at(trace, 10, 100 + 5) is None  # the caption
    assert (pixels[100:] < 128).all(axis=-1).any()  # the caption has dark text
    selected = np.asarray(cluster_map_picture(trace, 1, token=4, side=100)).astype(int)
    assert selected[75, 75].tolist() == list(HIGHLIGHT) and selected[25, 75].tolist() == [228] * 3
    assert np.array_equal(map_colours(patch_groups(trace, 1, token=4))[1, 1], np.asarray(HIGHLIGHT, np.float32))


def test_animation_has_a_frame_per_layer_and_the_input(trace, tmp_path):
    frames = animation_frames(Image.new("RGB", (40, 40), (90, 90, 200)), trace)
    path = save_animation(frames, tmp_path / "merge.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == trace.num_layers + 1


def test_video_has_a_frame_per_layer_and_the_input_in_order(trace, tmp_path):
    av = pytest.importorskip("av")
    frames = animation_frames(Image.new("RGB", (41, 41), (90, 90, 200)), trace)  # odd sides: padded to even
    path = save_video(frames, tmp_path / "merge.mp4", frame_ms=500, last_ms=1500)
    with av.open(str(path)) as video:
        stream = video.streams.video[0]
        decoded = list(video.decode(stream))
        assert stream.codec_context.name == "h264"
        assert (decoded[0].width, decoded[0].height) == (frames[0].width + frames[0].width % 2,
                                                          frames[0].height + frames[0].height % 2)
        seconds = [float(f.pts * f.time_base) for f in decoded]
        assert float(video.duration) / 1e6 == pytest.approx(0.5 * (len(frames) - 1) + 1.5, abs=0.05)
    assert len(decoded) == trace.num_layers + 1
    assert seconds == pytest.approx([0.5 * i for i in range(len(frames))], abs=1e-3)
    for frame, picture in zip(decoded, frames):  # each frame is its picture (lossy: compare means)
        got = np.asarray(frame.to_image().crop((0, 0, picture.width, picture.height))).astype(float)
        assert np.abs(got - np.asarray(picture).astype(float)).mean() < 12
