"""Readable pictures of merged groups (PIL; no gradio): single patches recede, merged groups stand out.

* Colours are keyed on a group's smallest member (``Trace.stable_groups``), so a group keeps its colour
  from layer to layer until it merges with one holding a smaller index.
* A single patch (a group of one) shows the photo in grey; a merged group is tinted with its colour and
  outlined.
* A selected group (the one holding a clicked patch) is drawn in ``HIGHLIGHT`` and everything else in grey.

Shapes as in :mod:`tomviz.render.overlay`: group arrays are ``[N0]`` (one id per input token, -1 = pruned),
the first ``num_protected`` tokens are CLS & co., the rest the patches in row-major order.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tomviz.render.overlay import (
    PRUNED_COLOUR,
    boundary_mask,
    display_image,
    patch_index_map,
    patch_labels,
    per_pixel,
    to_image,
)
from tomviz.trace import Trace

HIGHLIGHT = (230, 0, 230)  # the selected group (magenta: no stable colour is this saturated on a grey photo)
SINGLE_GREY = 0.55  # single patches: this much of the photo's luminance, the rest light grey
TINT = 0.6  # merged groups: this much of their colour over the photo
HIGHLIGHT_TINT = 0.7
OUTLINE = (255, 255, 255)
STRIP_LEGEND = ("Every layer (L = after layer, then tokens left and merged groups). Colour: a merged group, kept "
                "across layers; grey: a patch still alone; magenta: the selected group.")


def stable_colours(ids: np.ndarray) -> np.ndarray:
    """``[...]`` non-negative ids → ``[..., 3]`` float RGB (0..255): hues spread by the golden ratio, so
    neighbouring ids get distant hues; the same id always gets the same colour."""
    from matplotlib.colors import hsv_to_rgb

    ids = np.asarray(ids, dtype=np.float64)
    hue = (ids * 0.6180339887 + 0.11) % 1.0
    hsv = np.stack([hue, np.full_like(hue, 0.8), np.full_like(hue, 0.95)], axis=-1)
    rgb = hsv_to_rgb(hsv) * 255.0
    magenta = (hue > 0.78) & (hue < 0.9)  # keep magenta for the selection: shift these hues to blue
    if magenta.any():
        hsv[magenta, 0] -= 0.2
        rgb[magenta] = hsv_to_rgb(hsv[magenta]) * 255.0
    return rgb.astype(np.float32)


@dataclass(frozen=True)
class PatchGroups:
    """One layer's groups on the patch grid: ``[rows, cols]`` each."""

    stable: np.ndarray  # group named by its smallest input token; -1 = pruned
    size: np.ndarray  # input tokens in the patch's group (0 = pruned)
    selected: np.ndarray | None = None  # bool: in the selected group


def patch_groups(trace: Trace, layer: int, token: int | None = None) -> PatchGroups:
    """:class:`PatchGroups` after ``layer`` (0-based; -1 = the input, every patch alone); ``token``
    (an input token index) selects its group."""
    grid, protected = trace.patch_grid, trace.num_protected
    if layer < 0:
        groups = np.arange(trace.num_input_tokens)
        stable, sizes = groups, np.ones(trace.num_input_tokens)
    else:
        groups, stable, sizes = trace.groups(layer), trace.stable_groups(layer), trace.sizes(layer)
    size = np.where(groups >= 0, sizes[np.maximum(groups, 0)], 0)  # [N0]
    selected = None
    if token is not None:
        selected = patch_labels((groups == groups[token]) & (groups[token] >= 0), grid, protected)
    return PatchGroups(patch_labels(stable, grid, protected), patch_labels(size, grid, protected).astype(int), selected)


def merged_group_count(trace: Trace, layer: int) -> int:
    """Groups of two or more input tokens after ``layer`` (0-based)."""
    return int((trace.sizes(layer) >= 2).sum())


class ClusterCanvas:
    """A photo prepared once for the cluster pictures of many layers (:func:`cluster_picture`, the strip,
    the animation): its pixels, its greyed look (single patches) and the patch under every pixel."""

    def __init__(self, image: Image.Image, rows: int, cols: int):
        self.pixels = np.asarray(image.convert("RGB"), dtype=np.float32)  # [H, W, 3]
        height, width = self.pixels.shape[:2]
        grey = self.pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # [H, W]
        self.grey = np.repeat((SINGLE_GREY * grey + (1 - SINGLE_GREY) * 235.0)[..., None], 3, axis=-1)  # [H, W, 3]
        self.patch = patch_index_map(height, width, rows, cols)  # [H, W] row-major patch index

    def draw(self, groups: PatchGroups, outline: bool = True) -> Image.Image:
        """One layer's cluster picture (see the module docstring). Per patch first, then one gather per
        pixel: the same numbers as blending pixel by pixel."""
        stable, size = groups.stable.reshape(-1), groups.size.reshape(-1)  # [P] each
        patch = self.patch
        if groups.selected is None:
            tinted, weight = size >= 2, TINT  # [P]
            colours = stable_colours(np.maximum(stable, 0))  # [P, 3]
        else:
            tinted, weight = groups.selected.reshape(-1), HIGHLIGHT_TINT
            colours = np.broadcast_to(np.asarray(HIGHLIGHT, np.float32), (stable.size, 3))
        blend = weight * per_pixel(colours, patch) + (1 - weight) * self.pixels  # [H, W, 3]
        out = np.where(per_pixel(tinted, patch)[..., None], blend, self.grey)
        if (stable < 0).any():
            out[per_pixel(stable < 0, patch)] = PRUNED_COLOUR
        if outline:
            outline_merged(out, stable, size, patch)
        return to_image(out)


def cluster_picture(image: Image.Image, groups: PatchGroups, max_side: int | None = 448,
                    outline: bool = True) -> Image.Image:
    """The readable cluster picture of one layer (see the module docstring), at the photo's size
    (downscaled to ``max_side``). For many layers of one photo, draw on one :class:`ClusterCanvas`."""
    base = display_image(image, max_side) if max_side else image
    return ClusterCanvas(base, *groups.stable.shape).draw(groups, outline)


def outline_merged(out: np.ndarray, stable: np.ndarray, size: np.ndarray, patch: np.ndarray) -> None:
    """Draw ``OUTLINE`` into ``out`` ``[H, W, 3]`` around the merged groups only (single patches stay
    unframed); ``stable``/``size`` are ``[P]`` per patch, ``patch`` ``[H, W]`` the patch under each pixel."""
    alone = -2 - np.arange(stable.size)  # a label of its own per patch
    labels = per_pixel(np.where(size >= 2, stable, alone), patch)  # [H, W]
    out[boundary_mask(labels) & _touches(per_pixel(size >= 2, patch))] = OUTLINE


def map_colours(groups: PatchGroups) -> np.ndarray:
    """``[rows, cols, 3]`` float RGB of the cluster map (the grid without the photo): a patch still alone
    light grey, a merged group its stable colour; with a selection, the selected group in ``HIGHLIGHT``
    and the other merged groups a darker grey; pruned patches near-black."""
    merged = groups.size >= 2
    rgb = np.full(groups.stable.shape + (3,), 228.0, dtype=np.float32)
    if groups.selected is None:
        rgb[merged] = stable_colours(groups.stable[merged])
    else:
        rgb[merged] = 180.0
        rgb[groups.selected] = HIGHLIGHT
    rgb[groups.stable < 0] = 40.0
    return rgb


@dataclass(frozen=True)
class MapLayout:
    """The cluster-map picture: ``rows x cols`` square cells of ``cell`` pixels, then a caption band."""

    rows: int
    cols: int
    cell: int
    caption: int = 24

    @property
    def size(self) -> tuple[int, int]:
        return self.cols * self.cell, self.rows * self.cell + self.caption

    def token_at(self, trace: Trace, x: float, y: float) -> int | None:
        """The input token under pixel ``(x, y)`` of the picture, or None on the caption."""
        if not (0 <= x < self.cols * self.cell and 0 <= y < self.rows * self.cell):
            return None
        return token_at(trace, x / (self.cols * self.cell), y / (self.rows * self.cell))


def map_layout(trace: Trace, side: int = 448) -> MapLayout:
    """Cells as large as fit ``side`` pixels on the grid's longer side (at least 2 px)."""
    rows, cols = trace.patch_grid
    return MapLayout(rows, cols, max(2, side // max(rows, cols)))


def cluster_map_picture(trace: Trace, layer: int, token: int | None = None, side: int = 448) -> Image.Image:
    """The cluster map after ``layer`` (0-based) as a picture (:func:`map_colours` per patch, the merged
    groups outlined in white), captioned with the tokens left and the number of merged groups; ``token``
    (an input token index) selects its group. Pixel → token: :meth:`MapLayout.token_at`."""
    layout = map_layout(trace, side)
    groups = patch_groups(trace, layer, token)
    height, width = layout.rows * layout.cell, layout.cols * layout.cell
    patch = patch_index_map(height, width, layout.rows, layout.cols)  # [H, W]
    out = per_pixel(map_colours(groups).reshape(-1, 3), patch)  # [H, W, 3]
    outline_merged(out, groups.stable.reshape(-1), groups.size.reshape(-1), patch)
    sheet = Image.new("RGB", layout.size, (255, 255, 255))
    sheet.paste(to_image(out), (0, 0))
    text = (f"After layer {layer + 1}: {trace.layers[layer].num_tokens} tokens, "
            f"{merged_group_count(trace, layer)} merged groups (≥ 2 patches)")
    sheet.paste(caption_band(text, width, layout.caption), (0, height))
    return sheet


def _touches(mask: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: pixels in ``mask`` or whose right or lower neighbour is."""
    out = mask.copy()
    out[:, :-1] |= mask[:, 1:]
    out[:-1, :] |= mask[1:, :]
    return out


@functools.lru_cache(maxsize=4)
def caption_font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@functools.lru_cache(maxsize=512)
def caption_band(text: str, width: int, height: int) -> Image.Image:
    """A strip tile's caption, black on white, ``width`` x ``height`` (drawn once per text: FreeType
    takes ~1.5 ms a caption, a fifth of a strip; a photo's captions repeat as its ratio is revisited)."""
    band = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(band).text((2, 2), text, fill=(0, 0, 0), font=caption_font(14))
    return band


@functools.lru_cache(maxsize=8)
def legend_band(width: int, height: int) -> Image.Image:
    """The strip's legend (drawn once per size: text rendering is a third of a strip's cost)."""
    band = Image.new("RGB", (width, height), (255, 255, 255))
    draw, font = ImageDraw.Draw(band), caption_font(14)
    x = max(StripLayout.gap, width - StripLayout.gap - int(draw.textlength(STRIP_LEGEND, font=font)))  # right-aligned:
    draw.text((x, 24), STRIP_LEGEND, fill=(40, 40, 40), font=font)  # gr.Image's label covers the top left
    return band


@dataclass(frozen=True)
class StripLayout:
    """Where each layer's tile sits in the strip: tile ``l`` (0-based) spans
    ``(x(l), y(l)) .. (x(l) + tile_w, y(l) + tile_h)`` in the strip's pixels."""

    num_tiles: int
    columns: int
    tile_w: int
    tile_h: int
    gap: int = 6
    caption: int = 20
    header: int = 44  # the legend, below the space gr.Image's label covers

    @property
    def size(self) -> tuple[int, int]:
        rows = (self.num_tiles + self.columns - 1) // self.columns
        return (self.columns * (self.tile_w + self.gap) + self.gap,
                self.header + rows * (self.tile_h + self.caption + self.gap) + self.gap)

    def x(self, tile: int) -> int:
        return self.gap + (tile % self.columns) * (self.tile_w + self.gap)

    def y(self, tile: int) -> int:
        return self.header + self.gap + (tile // self.columns) * (self.tile_h + self.caption + self.gap) + self.caption


def strip_layout(image_size: tuple[int, int], num_tiles: int, width: int = 1380, columns: int = 6) -> StripLayout:
    """The layout of a strip ``width`` pixels wide for a photo of ``image_size = (w, h)``."""
    columns = max(1, min(columns, num_tiles))
    gap = StripLayout.gap
    tile_w = (width - (columns + 1) * gap) // columns
    tile_h = max(1, round(tile_w * image_size[1] / image_size[0]))
    return StripLayout(num_tiles, columns, tile_w, tile_h)


def layer_strip_picture(image: Image.Image, trace: Trace, token: int | None = None, current: int | None = None,
                        width: int = 1380, columns: int = 6) -> Image.Image:
    """Every layer's cluster picture in a grid ``width`` pixels wide, captioned "L<l> · <tokens> tokens ·
    <g> merged"; ``token`` (input token index) highlights its group in every layer; the ``current`` layer
    (0-based) gets a dark frame. Tile positions: :func:`strip_layout`."""
    layout = strip_layout(image.size, trace.num_layers, width, columns)
    tile = image.convert("RGB").resize((layout.tile_w, layout.tile_h), Image.Resampling.BILINEAR)
    canvas = ClusterCanvas(tile, *trace.patch_grid)
    sheet = Image.new("RGB", layout.size, (255, 255, 255))
    sheet.paste(legend_band(layout.size[0], layout.header), (0, 0))
    draw = ImageDraw.Draw(sheet)
    counts = trace.token_counts()[1:]
    for l in range(trace.num_layers):
        x, y = layout.x(l), layout.y(l)
        sheet.paste(canvas.draw(patch_groups(trace, l, token)), (x, y))
        text = f"L{l + 1} · {counts[l]} tokens · {merged_group_count(trace, l)} merged"
        sheet.paste(caption_band(text, layout.tile_w + layout.gap, layout.caption), (x, y - layout.caption))
        if current == l:
            draw.rectangle((x - 3, y - 3, x + layout.tile_w + 2, y + layout.tile_h + 2), outline=(20, 20, 20), width=2)
    return sheet


def strip_token_at(layout: StripLayout, trace: Trace, x: float, y: float) -> tuple[int, int] | None:
    """The (layer, input token) under pixel ``(x, y)`` of a strip, or None between tiles."""
    for l in range(layout.num_tiles):
        tx, ty = x - layout.x(l), y - layout.y(l)
        if 0 <= tx < layout.tile_w and 0 <= ty < layout.tile_h:
            return l, token_at(trace, tx / layout.tile_w, ty / layout.tile_h)
    return None


def token_at(trace: Trace, fx: float, fy: float) -> int:
    """The input token of the patch at fraction ``(fx, fy)`` (0..1) of the picture's width and height."""
    rows, cols = trace.patch_grid
    row = min(max(int(fy * rows), 0), rows - 1)
    col = min(max(int(fx * cols), 0), cols - 1)
    return trace.num_protected + row * cols + col


def patch_name(trace: Trace, token: int) -> str:
    """``"patch (row, col)"`` (1-based) of an input token; protected tokens are named as such."""
    protected = trace.num_protected
    if token < protected:
        return "CLS" if token == 0 else f"protected token {token}"
    cols = trace.patch_grid[1]
    row, col = divmod(token - protected, cols)
    return f"patch ({row + 1}, {col + 1})"


def animation_frames(image: Image.Image, trace: Trace, max_side: int = 448) -> list[Image.Image]:
    """``num_layers + 1`` frames: the input (every patch alone), then the cluster picture after each
    layer, each under a band saying the layer, the tokens left and the merged groups."""
    canvas = ClusterCanvas(display_image(image, max_side), *trace.patch_grid)
    font = caption_font(16)
    band = 28
    counts = trace.token_counts()
    frames = []
    for l in range(-1, trace.num_layers):
        picture = canvas.draw(patch_groups(trace, l))
        frame = Image.new("RGB", (picture.width, picture.height + band), (255, 255, 255))
        frame.paste(picture, (0, band))
        if l < 0:
            text = f"input · {counts[0]} tokens"
        else:
            text = f"after layer {l + 1} of {trace.num_layers} · {counts[l + 1]} tokens · {merged_group_count(trace, l)} merged groups"
        ImageDraw.Draw(frame).text((6, 5), text, fill=(0, 0, 0), font=font)
        frames.append(frame)
    return frames


def save_animation(frames: Sequence[Image.Image], path, frame_ms: int = 700, last_ms: int = 2000):
    """Write ``frames`` as a looping animated GIF at ``path``; returns the path. Every frame is kept
    (consecutive frames differ at least in their caption)."""
    durations = [frame_ms] * (len(frames) - 1) + [last_ms]
    frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=durations, loop=0, optimize=False)
    return path


def save_video(frames: Sequence[Image.Image], path, frame_ms: int = 700, last_ms: int = 2000):
    """Write ``frames`` as an H.264 MP4 at ``path`` (PyAV, whose wheel bundles FFmpeg's libraries); returns
    the path. One video frame per picture, shown ``frame_ms`` each and the last ``last_ms``, as
    :func:`save_animation` times the GIF. H.264 in yuv420p needs even sides: frames are padded with white
    on the right and bottom by at most one pixel. No B-frames, so packets leave the encoder in display
    order and the last one can carry the last frame's duration."""
    import av  # imported here: only the MP4 export needs it

    width = max(f.width for f in frames) + max(f.width for f in frames) % 2
    height = max(f.height for f in frames) + max(f.height for f in frames) % 2
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("h264")
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, 1000)  # milliseconds
        stream.codec_context.max_b_frames = 0
        packets = []
        for index, picture in enumerate(frames):
            canvas = Image.new("RGB", (width, height), (255, 255, 255))
            canvas.paste(picture.convert("RGB"), (0, 0))
            frame = av.VideoFrame.from_image(canvas)
            frame.pts, frame.time_base = index * frame_ms, stream.time_base
            packets += stream.encode(frame)
        packets += stream.encode()  # flush
        for index, packet in enumerate(packets):
            milliseconds = last_ms if index == len(packets) - 1 else frame_ms
            packet.duration = round(Fraction(milliseconds, 1000) / packet.time_base)  # in the packet's own time base
            container.mux(packet)
    return path
