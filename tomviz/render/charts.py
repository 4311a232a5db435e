"""Small charts drawn as pictures with PIL (no gradio, no plotly): the token count and the GFLOPs per layer.

They change with every merge ratio. A plotly figure costs the page a full re-render on each ratio change
(≈ 190 ms for the two, BENCHMARKS.md "App latency"); a picture is one image load, like the cluster map.
A chart takes ~3 ms to draw. Layers are shown 1-based ("after layer l", 0 = the input).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageDraw

from tomviz.render.groups import caption_font
from tomviz.trace import Trace

SIZE = (560, 300)  # width, height in pixels (two side by side fit the Image tab's right column at 1400 px)
AXIS, GRID, TEXT = (90, 90, 90), (232, 232, 232), (30, 30, 30)
LINE = (31, 119, 180)  # the token count
UNMERGED, MERGED = (154, 165, 177), (239, 108, 0)  # the GFLOPs bars, as gflops_figure colours them


@dataclass(frozen=True)
class Frame:
    """The plotting area inside the picture: ``left..right`` × ``top..bottom`` pixels, for x in
    ``[x0, x1]`` and y in ``[0, y1]``."""

    left: int
    top: int
    right: int
    bottom: int
    x0: float
    x1: float
    y1: float

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / max(self.x1 - self.x0, 1e-9) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - value / max(self.y1, 1e-9) * (self.bottom - self.top)


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values ``0, step, 2·step, …`` covering ``[0, top]`` (step 1, 2 or 5 × 10^k)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 0.01 or value == 0 else f"{value:.1e}"


def _axes(draw: ImageDraw.ImageDraw, title: str, x_title: str, y_title: str, x_values: Sequence[int],
          top: float, x0: float, x1: float, legend_rows: int = 0) -> Frame:
    """Title, y grid with round ticks, x ticks at ``x_values``, axis titles; returns the plotting frame. A
    legend of ``legend_rows`` rows goes under the x-axis title (never over it)."""
    font, small = caption_font(15), caption_font(12)
    width, height = SIZE
    ticks = nice_ticks(top)
    frame = Frame(left=58, top=62, right=width - 22, bottom=height - 50 - 18 * legend_rows, x0=x0, x1=x1, y1=ticks[-1])
    draw.text((10, 24), title, fill=TEXT, font=font)  # under gr.Image's label, which covers the top left
    for tick in ticks:
        y = frame.y(tick)
        draw.line([(frame.left, y), (frame.right, y)], fill=GRID)
        text = _label(tick)
        draw.text((frame.left - 6 - draw.textlength(text, font=small), y - 7), text, fill=AXIS, font=small)
    draw.line([(frame.left, frame.bottom), (frame.right, frame.bottom)], fill=AXIS)
    step = max(1, math.ceil(len(x_values) / 13))  # at most ~13 labels
    for value in list(x_values)[::step]:
        x = frame.x(value)
        draw.line([(x, frame.bottom), (x, frame.bottom + 4)], fill=AXIS)
        draw.text((x - draw.textlength(str(value), font=small) / 2, frame.bottom + 6), str(value), fill=AXIS, font=small)
    draw.text(((frame.left + frame.right - draw.textlength(x_title, font=small)) / 2, frame.bottom + 22), x_title,
              fill=AXIS, font=small)
    draw.text((10, frame.top - 18), y_title, fill=AXIS, font=small)
    return frame


def _legend(draw: ImageDraw.ImageDraw, entries: Sequence[tuple[str, tuple[int, int, int]]], y: float) -> None:
    small, x = caption_font(12), 58.0
    for text, colour in entries:
        draw.rectangle([x, y + 3, x + 10, y + 13], fill=colour)
        draw.text((x + 14, y), text, fill=TEXT, font=small)
        x += 14 + draw.textlength(text, font=small) + 18


def token_count_picture(trace: Trace) -> Image.Image:
    """Tokens after each layer (0 = the input), one line with a marker per layer; ``SIZE`` pixels."""
    counts = trace.token_counts()  # [L + 1]
    picture = Image.new("RGB", SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    layers = list(range(len(counts)))
    frame = _axes(draw, f"Token count per layer: {counts[0]} to {counts[-1]}", "after layer (0 = input)", "tokens",
                  layers, max(counts), 0, max(len(counts) - 1, 1))
    points = [(frame.x(l), frame.y(c)) for l, c in zip(layers, counts)]
    draw.line(points, fill=LINE, width=2)
    for x, y in points:
        draw.ellipse([x - 3.5, y - 3.5, x + 3.5, y + 3.5], fill=LINE)
    return picture


def gflops_picture(merged: Sequence[float], unmerged: Sequence[float]) -> Image.Image:
    """Analytic GFLOPs per layer (``[L]`` each), unmerged and merged bars side by side, the totals in the
    legend under the x-axis title; ``SIZE`` pixels."""
    picture = Image.new("RGB", SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    layers = list(range(1, len(merged) + 1))
    frame = _axes(draw, "GFLOPs per layer (attention + MLP)", "layer", "GFLOPs", layers,
                  max([*merged, *unmerged, 1e-9]), 0.5, len(merged) + 0.5, legend_rows=1)
    half = (frame.x(2) - frame.x(1)) * 0.8 / 2  # each bar: 40 % of a layer's width
    for layer, (m, u) in enumerate(zip(merged, unmerged), start=1):
        x = frame.x(layer)
        for left, value, colour in ((x - half, u, UNMERGED), (x, m, MERGED)):
            if value > 0:
                draw.rectangle([left, frame.y(value), left + half - 1, frame.bottom], fill=colour)
    _legend(draw, [(f"unmerged ({sum(unmerged):.2f} total)", UNMERGED), (f"merged ({sum(merged):.2f} total)", MERGED)],
            frame.bottom + 40)
    return picture
