"""Pictures of a clip's temporal groups (PIL and plotly; no gradio).

* The frame strip: every sampled frame as a tile, left to right and row by row. A group keeps one colour
  in every frame it spans (the colour is keyed on the group's smallest member, ``Trace.stable_groups``); a
  token still alone shows the frame in grey; a dropped token is dark; merged groups are outlined. With a
  selected token, its group is drawn in ``HIGHLIGHT`` in every frame and the rest in grey.
* Segments (HoliTom's windows, FastVID's segments): a coloured band above each tile, alternating per
  segment, and a black bar before the first frame of each new segment.
* Captions: the frame index, its time and the tokens it hands on (kept tokens placed in that frame).

Shapes: a clip trace's input tokens are frame-major, ``[T * rows * cols]``; ``frames`` is ``[T, H, W, 3]``. A
video encoder's trace (VideoMAE) is time-step-major with ``meta["tubelet_size"]`` frames per step: frame ``t``
shows the tokens of step ``t // tubelet_size``, so a tubelet's group is drawn on each frame it spans.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from tomviz.render.groups import HIGHLIGHT, SINGLE_GREY, TINT, caption_band, save_video, stable_colours
from tomviz.render.overlay import PRUNED_COLOUR, boundary_mask, patch_index_map, per_pixel, to_image
from tomviz.trace import Trace

SEGMENT_COLOURS = ((70, 130, 220), (240, 170, 40))  # alternating per segment
STRIP_LEGEND = ("Colour: one group, the same in every frame it spans; grey: a token still alone; dark: dropped; "
                "band above a frame: its segment (a black bar starts a new one); magenta: the selected group.")


@dataclass(frozen=True)
class FrameStripLayout:
    """Where frame ``t``'s tile sits: column ``t % columns``, row ``t // columns``."""

    tile: tuple[int, int]  # (width, height) of a frame's picture
    columns: int
    num_frames: int
    band: int = 6  # the segment band above a tile
    caption: int = 20  # below a tile
    gap: int = 6

    @property
    def cell(self) -> tuple[int, int]:
        return self.tile[0] + self.gap, self.band + self.tile[1] + self.caption + self.gap

    @property
    def size(self) -> tuple[int, int]:
        rows = -(-self.num_frames // self.columns)
        return self.columns * self.cell[0] + self.gap, rows * self.cell[1] + self.gap

    def origin(self, frame: int) -> tuple[int, int]:
        """The top-left pixel of frame ``frame``'s picture."""
        return (self.gap + (frame % self.columns) * self.cell[0],
                self.gap + (frame // self.columns) * self.cell[1] + self.band)

    def token_at(self, trace: Trace, x: float, y: float) -> int | None:
        """The input token under pixel ``(x, y)`` of the strip, or None off the frames."""
        _, rows, cols = trace.frame_grid
        column, row = int((x - self.gap) // self.cell[0]), int((y - self.gap) // self.cell[1])
        frame = row * self.columns + column
        if not (0 <= column < self.columns and 0 <= frame < self.num_frames):
            return None
        left, top = self.origin(frame)
        fx, fy = (x - left) / self.tile[0], (y - top) / self.tile[1]
        if not (0 <= fx < 1 and 0 <= fy < 1):
            return None
        return ((frame // tubelet_size(trace)) * rows + int(fy * rows)) * cols + int(fx * cols)


def tubelet_size(trace: Trace) -> int:
    """Frames per time step of ``trace``'s frame grid (1 for per-frame encoders, 2 for VideoMAE)."""
    return int(trace.meta.get("tubelet_size") or 1)


def strip_layout(frames: np.ndarray, columns: int = 8, tile_width: int = 176) -> FrameStripLayout:
    """Tiles ``tile_width`` wide with the frames' aspect; ``columns`` per row (fewer for short clips)."""
    height, width = frames.shape[1:3]
    tile = (tile_width, max(8, round(tile_width * height / width)))
    return FrameStripLayout(tile=tile, columns=min(columns, frames.shape[0]), num_frames=frames.shape[0])


def frame_picture(frame: np.ndarray, stable: np.ndarray, size: np.ndarray, selected: np.ndarray | None,
                  tile: tuple[int, int]) -> Image.Image:
    """One frame ``[H, W, 3]`` with its groups drawn. stable/size: ``[rows, cols]`` per patch (group named by its
    smallest member, -1 = dropped; size of the group); selected: ``[rows, cols]`` bool or None."""
    rows, cols = stable.shape
    photo = np.asarray(Image.fromarray(frame).resize(tile, Image.Resampling.BILINEAR), dtype=np.float32)  # [h, w, 3]
    patch = patch_index_map(tile[1], tile[0], rows, cols)  # [h, w]
    grey = photo.mean(axis=2, keepdims=True) * SINGLE_GREY + 255 * (1 - SINGLE_GREY) * 0.8
    merged = (size >= 2).flatten()
    colours = np.full((rows * cols, 3), 200.0, dtype=np.float32)
    if selected is None:
        colours[merged] = stable_colours(stable.flatten()[merged])
    else:
        merged = merged | selected.flatten()
        colours[selected.flatten()] = HIGHLIGHT
    out = np.where(per_pixel(merged, patch)[..., None], TINT * per_pixel(colours, patch) + (1 - TINT) * photo, grey)
    out[per_pixel(stable.flatten() < 0, patch)] = PRUNED_COLOUR
    alone = -2 - np.arange(rows * cols)
    labels = per_pixel(np.where(merged, stable.flatten(), alone), patch)
    out[boundary_mask(labels) & per_pixel(merged, patch)] = 255.0
    return to_image(out.astype(np.float32))


def frame_groups(trace: Trace, stage: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """After ``stage``: ``[T, rows, cols]`` stable group names, ``[N0]`` group ids, ``[T, rows, cols]`` group sizes
    (0 where dropped)."""
    stable = trace.on_frame_grid(trace.stable_groups(stage))
    groups, sizes = trace.groups(stage), trace.sizes(stage)
    return stable, groups, trace.on_frame_grid(np.where(groups >= 0, sizes[np.maximum(groups, 0)], 0))


def frame_strip(frames: np.ndarray, trace: Trace, stage: int = -1, token: int | None = None,
                layout: FrameStripLayout | None = None) -> Image.Image:
    """The frame strip of ``trace`` after ``stage`` (see the module docstring); ``token`` selects its group."""
    layout = layout or strip_layout(frames)
    stable, groups, size = frame_groups(trace, stage)
    selected = None
    if token is not None and groups[token] >= 0:
        selected = trace.on_frame_grid(groups == groups[token])
    tubelet = tubelet_size(trace)
    counts = trace.tokens_per_frame() if "kept_positions" in trace.meta else None
    canvas = Image.new("RGB", layout.size, (255, 255, 255))
    segments = [segment_of_frames(trace)[frame // tubelet] for frame in range(layout.num_frames)]
    for frame, segment in enumerate(segments):
        left, top = layout.origin(frame)
        step = frame // tubelet
        picture = frame_picture(frames[frame], stable[step], size[step],
                                None if selected is None else selected[step], layout.tile)
        canvas.paste(picture, (left, top))
        band = Image.new("RGB", (layout.tile[0], layout.band - 2), SEGMENT_COLOURS[segment % 2])
        canvas.paste(band, (left, top - layout.band))
        if frame > 0 and segment != segments[frame - 1]:
            canvas.paste(Image.new("RGB", (3, layout.tile[1] + layout.band), (0, 0, 0)), (left - 5, top - layout.band))
        caption = f"f{frame} · {_time(trace, frame)} · " + (f"{counts[frame]} tok" if counts is not None else f"tubelet {step}")
        canvas.paste(caption_band(caption, layout.tile[0], layout.caption - 2), (left, top + layout.tile[1] + 1))
    return canvas


def segment_of_frames(trace: Trace) -> list[int]:
    """``[T]`` the segment index of each frame (all 0 when the method does not segment)."""
    num_frames = trace.frame_grid[0]
    out = [0] * num_frames
    for index, (start, end) in enumerate(trace.meta.get("segments") or []):
        for frame in range(int(start), int(end) + 1):
            out[frame] = index
    return out


def _time(trace: Trace, frame: int) -> str:
    times = trace.meta.get("timestamps") or []
    return f"{float(times[frame]):.1f}s" if frame < len(times) else ""


def merge_video(frames: np.ndarray, trace: Trace, path, frame_ms: int = 400, tile_width: int = 480) -> object:
    """An MP4 at ``path``; returns the path. A one-step trace (a temporal method on a clip's tokens): each sampled
    frame as it is, then the same frames with the groups drawn (one video frame per clip frame). A trace with
    one record per encoder layer (VideoMAE, TempMe): frames x layers, as the image GIF is — the frame strip of the
    input, then the strip after each layer, captioned (one video frame per layer plus the input)."""
    if trace.num_layers > 1:
        return layer_video(frames, trace, path, frame_ms=2 * frame_ms)
    stable, _, size = frame_groups(trace, -1)
    tile = strip_layout(frames, tile_width=tile_width).tile
    originals = [Image.fromarray(frame).resize(tile, Image.Resampling.BILINEAR) for frame in frames]
    steps = [t // tubelet_size(trace) for t in range(frames.shape[0])]  # the time step each frame shows
    drawn = [frame_picture(frames[t], stable[k], size[k], None, tile) for t, k in enumerate(steps)]
    return save_video(originals + drawn, path, frame_ms=frame_ms, last_ms=2 * frame_ms)


def layer_video(frames: np.ndarray, trace: Trace, path, frame_ms: int = 800, caption: int = 24) -> object:
    """``num_layers + 1`` video frames: the strip of the clip's frames untouched, then :func:`frame_strip` after
    each record, each under a caption (``meta["stages"]`` names a record, else "after layer l")."""
    layout = strip_layout(frames)
    plain = Image.new("RGB", layout.size, (255, 255, 255))
    for index, frame in enumerate(frames):
        plain.paste(Image.fromarray(frame).resize(layout.tile, Image.Resampling.BILINEAR), layout.origin(index))
    names = trace.meta.get("stages") or [f"layer {layer + 1}" for layer in range(trace.num_layers)]
    pictures = [(f"input: {frames.shape[0]} frames, {trace.num_input_tokens} tokens", plain)]
    counts = trace.token_counts()
    for layer in range(trace.num_layers):
        pictures.append((f"after {names[layer]}: {counts[layer + 1]} tokens", frame_strip(frames, trace, stage=layer, layout=layout)))
    captioned = []
    for text, picture in pictures:
        page = Image.new("RGB", (picture.width, picture.height + caption), (255, 255, 255))
        page.paste(caption_band(text, picture.width, caption), (0, 0))
        page.paste(picture, (0, caption))
        captioned.append(page)
    return save_video(captioned, path, frame_ms=frame_ms, last_ms=2 * frame_ms)


def frame_counts_figure(counts: Sequence[int], per_frame_in: int, height: int = 260) -> go.Figure:
    """Bars of the tokens each frame hands on, against the ``per_frame_in`` it came with."""
    frames = list(range(len(counts)))
    figure = go.Figure([go.Bar(x=frames, y=[per_frame_in] * len(frames), name="input", marker_color="#d0d0d0"),
                        go.Bar(x=frames, y=list(counts), name="handed on", marker_color="#3a78c9")])
    figure.update_layout(barmode="overlay", height=height, margin=dict(l=40, r=10, t=30, b=40),
                         xaxis_title="frame", yaxis_title="tokens", title="Tokens per frame", legend=dict(orientation="h"))
    return figure


def layer_counts_figure(counts: Sequence[int], height: int = 260) -> go.Figure:
    """Bars of the tokens entering the encoder and left after each layer (``counts = [N0, N_1, ..., N_L]``)."""
    names = ["input"] + [f"layer {i}" for i in range(1, len(counts))]
    figure = go.Figure([go.Bar(x=names, y=list(counts), marker_color=["#d0d0d0"] + ["#3a78c9"] * (len(counts) - 1))])
    figure.update_layout(height=height, margin=dict(l=40, r=10, t=30, b=40), yaxis_title="tokens",
                         title="Tokens after each encoder layer")
    return figure
