"""The frame strip against the trace: one colour per group in every frame, dropped dark, clicks name tokens."""
from __future__ import annotations

import numpy as np

from tomviz.render.groups import HIGHLIGHT
from tomviz.render.overlay import PRUNED_COLOUR
from tomviz.render.video import frame_counts_figure, frame_strip, merge_video, segment_of_frames, strip_layout
from tomviz.trace import LayerTrace, Trace

FRAMES, ROWS, COLS, CELL = 3, 2, 2, 16  # 12 tokens; each patch 16 x 16 pixels in a 32 x 32 tile


def clip_trace() -> Trace:
    """Frame-major: position (0, 0) merged over all frames (group 0); (0, 1) dropped in frames 1, 2; the rest alone."""
    group = np.array([0, 1, 2, 3, 0, -1, 4, 5, 0, -1, 6, 7], dtype=np.int32)
    sizes = np.bincount(group[group >= 0]).astype(np.float32)
    layer = LayerTrace(source=group, sizes=sizes, num_tokens_in=12)
    meta = {"frame_grid": [FRAMES, ROWS, COLS], "num_protected": 0, "num_input_tokens": 12, "segments": [[0, 1], [2, 2]],
            "kept_positions": [0, 1, 2, 3, 6, 7, 10, 11], "timestamps": [0.0, 0.5, 1.0], "method": "test"}
    return Trace(meta=meta, layers=[layer])


def tiles(picture, layout):
    array = np.asarray(picture)
    out = []
    for frame in range(FRAMES):
        left, top = layout.origin(frame)
        out.append(array[top : top + layout.tile[1], left : left + layout.tile[0]])
    return out


def centre(tile, row, col):
    return tuple(int(v) for v in tile[row * CELL + CELL // 2, col * CELL + CELL // 2])


def test_a_group_keeps_its_colour_in_every_frame_and_dropped_tokens_are_dark():
    frames = np.full((FRAMES, 32, 32, 3), 128, dtype=np.uint8)
    trace = clip_trace()
    layout = strip_layout(frames, tile_width=32)
    pictures = tiles(frame_strip(frames, trace, layout=layout), layout)
    merged = {centre(tile, 0, 0) for tile in pictures}
    assert len(merged) == 1 and merged != {(128, 128, 128)}  # one colour, not the grey of a lone token
    assert centre(pictures[1], 0, 1) == PRUNED_COLOUR and centre(pictures[2], 0, 1) == PRUNED_COLOUR
    assert centre(pictures[0], 0, 1) != PRUNED_COLOUR
    lone = centre(pictures[0], 1, 1)
    assert lone[0] == lone[1] == lone[2]  # a token alone is grey


def test_a_click_selects_the_group_in_every_frame():
    frames = np.full((FRAMES, 32, 32, 3), 128, dtype=np.uint8)
    trace = clip_trace()
    layout = strip_layout(frames, tile_width=32)
    left, top = layout.origin(2)
    token = layout.token_at(trace, left + 3, top + 3)
    assert token == 8 and trace.token_place(token) == (2, 0, 0)
    assert layout.token_at(trace, 0, 0) is None
    pictures = tiles(frame_strip(frames, trace, token=token, layout=layout), layout)
    highlighted = [centre(tile, 0, 0) for tile in pictures]
    expected = tuple(round(0.6 * h + 0.4 * 128) for h in HIGHLIGHT)
    assert all(np.abs(np.subtract(c, expected)).max() <= 1 for c in highlighted)


def test_segments_counts_and_the_mp4(tmp_path):
    trace = clip_trace()
    assert segment_of_frames(trace) == [0, 0, 1]
    assert trace.tokens_per_frame().tolist() == [4, 2, 2]
    figure = frame_counts_figure(trace.tokens_per_frame(), ROWS * COLS)
    assert list(figure.data[1].y) == [4, 2, 2]
    frames = np.full((FRAMES, 32, 32, 3), 128, dtype=np.uint8)
    path = merge_video(frames, trace, tmp_path / "merge.mp4", tile_width=32)
    import av

    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 2 * FRAMES


def tubelet_trace() -> Trace:
    """A video encoder's trace: 2 time steps of 2 x 2 tokens, tubelets of 2 frames (4 frames), two layers; after
    layer 2, token (step 0, 0, 0) and (step 1, 0, 0) are one group; the rest alone."""
    first = LayerTrace(source=np.arange(8, dtype=np.int32), sizes=np.ones(8, np.float32), num_tokens_in=8)
    group = np.array([0, 1, 2, 3, 0, 4, 5, 6], dtype=np.int32)
    second = LayerTrace(source=group, sizes=np.bincount(group).astype(np.float32), num_tokens_in=8)
    meta = {"frame_grid": [2, ROWS, COLS], "tubelet_size": 2, "num_protected": 0, "num_input_tokens": 8,
            "timestamps": [0.0, 0.1, 0.2, 0.3], "method": "tome"}
    return Trace(meta=meta, layers=[first, second])


def test_a_tubelet_is_drawn_on_each_frame_it_spans_and_clicks_map_back_to_it():
    frames = np.full((4, 32, 32, 3), 128, dtype=np.uint8)
    trace = tubelet_trace()
    layout = strip_layout(frames, tile_width=32)
    assert layout.num_frames == 4
    for frame in range(4):  # a click on frame 2 or 3 names a token of time step 1
        left, top = layout.origin(frame)
        assert layout.token_at(trace, left + 3, top + 3) == (frame // 2) * ROWS * COLS
        assert layout.token_at(trace, left + 20, top + 20) == (frame // 2) * ROWS * COLS + 3
    picture = frame_strip(frames, trace, stage=1, token=4, layout=layout)  # the merged group, selected from step 1
    array = np.asarray(picture)
    highlighted = tuple(round(0.6 * h + 0.4 * 128) for h in HIGHLIGHT)

    def is_highlighted(colour) -> bool:
        return np.abs(np.subtract(colour, highlighted)).max() <= 1

    for frame in range(4):  # its group is highlighted on all four frames; the lone patch (1, 1) is not
        left, top = layout.origin(frame)
        tile = array[top : top + layout.tile[1], left : left + layout.tile[0]]
        assert is_highlighted(centre(tile, 0, 0)) and not is_highlighted(centre(tile, 1, 1))
    before = np.asarray(frame_strip(frames, trace, stage=0, token=4, layout=layout))  # after layer 1 the token is alone:
    for frame, expected in ((0, False), (1, False), (2, True), (3, True)):  # only its own tubelet's frames
        left, top = layout.origin(frame)
        assert is_highlighted(before[top + CELL // 2, left + CELL // 2]) == expected


def test_a_trace_per_layer_makes_an_mp4_of_layers_plus_one_frames(tmp_path):
    """VideoMAE / TempMe traces (one record per encoder layer): frames x layers, the input strip then one strip
    per layer; the last strip equals the frame strip after the last layer (under its caption)."""
    import av

    trace, frames = tubelet_trace(), np.full((4, 32, 32, 3), 128, dtype=np.uint8)
    frames[:, :16] = 30
    path = merge_video(frames, trace, tmp_path / "layers.mp4")
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == trace.num_layers + 1
    last = np.asarray(frame_strip(frames, trace, stage=-1), dtype=np.float32)
    shown = decoded[-1][24:24 + last.shape[0], :last.shape[1]].astype(np.float32)
    assert np.abs(shown - last).mean() < 6  # H.264 at its default quality: close, not equal
    assert np.abs(decoded[0].astype(np.float32) - decoded[-1].astype(np.float32)).mean() > 1  # the input differs
