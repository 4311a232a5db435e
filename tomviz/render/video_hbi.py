"""The picture of a frames × words game (HBI): the frame strip grouped by colour beside the words, and a heat map
of the frame group × word group interactions (PIL; no gradio).

Shapes: ``frames`` ``[T, H, W, 3]`` uint8; ``frame_groups`` ``[T]`` and ``word_groups`` ``[W]`` group indices;
``cross`` / ``stderr`` ``[F, G]`` (frame groups × word groups).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from tomviz.render.groups import caption_font, stable_colours
from tomviz.render.overlay import colour_table

THUMB = 72  # thumbnail height in pixels
GAP = 6
BORDER = 4  # coloured frame around a thumbnail: its group
CELL = (96, 40)  # a heat-map cell (width, height)


def _colour(group: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in stable_colours(np.array([group]))[0])


def frames_row(frames: np.ndarray, frame_groups: np.ndarray, max_width: int = 1200) -> Image.Image:
    """Thumbnails left to right, each framed in its group's colour and numbered from 1 (two rows or more when
    they do not fit ``max_width``)."""
    height, width = frames.shape[1:3]
    thumb = (max(1, round(THUMB * width / height)), THUMB)
    cell = (thumb[0] + 2 * BORDER + GAP, THUMB + 2 * BORDER + 18)
    columns = max(1, min(len(frames), (max_width - GAP) // cell[0]))
    rows = -(-len(frames) // columns)
    canvas = Image.new("RGB", (columns * cell[0] + GAP, rows * cell[1] + GAP), (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), caption_font(13)
    for t, frame in enumerate(frames):
        x, y = GAP + (t % columns) * cell[0], GAP + (t // columns) * cell[1]
        draw.rectangle([x, y, x + thumb[0] + 2 * BORDER - 1, y + THUMB + 2 * BORDER - 1], fill=_colour(int(frame_groups[t])))
        canvas.paste(Image.fromarray(frame).resize(thumb, Image.Resampling.BILINEAR), (x + BORDER, y + BORDER))
        draw.text((x + BORDER, y + THUMB + 2 * BORDER + 1), f"{t + 1} · g{int(frame_groups[t]) + 1}", fill=(0, 0, 0), font=font)
    return canvas


def words_row(words: Sequence[str], word_groups: np.ndarray, width: int) -> Image.Image:
    """The words in order, each on its group's colour (word groups: letters A, B, ...)."""
    font = caption_font(15)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes, x, y = [], GAP, GAP
    for word, group in zip(words, word_groups):
        label = f"{word} ({_letter(int(group))})"
        w = int(measure.textlength(label, font=font)) + 10
        if x + w > width - GAP and x > GAP:
            x, y = GAP, y + 28
        boxes.append((x, y, w, label, int(group)))
        x += w + 4
    canvas = Image.new("RGB", (width, y + 28 + GAP), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for x, y, w, label, group in boxes:
        draw.rounded_rectangle([x, y, x + w, y + 24], radius=5, fill=_word_colour(group))
        draw.text((x + 5, y + 3), label, fill=(0, 0, 0), font=font)
    return canvas


def _letter(group: int) -> str:
    return chr(ord("A") + group) if group < 26 else f"W{group + 1}"


def _word_colour(group: int) -> tuple[int, int, int]:
    """A pale colour per word group (pastel of a hue apart from the frame groups')."""
    rgb = stable_colours(np.array([group + 7]))[0]
    return tuple(int(255 - 0.45 * (255 - c)) for c in rgb)


def interaction_heatmap(cross: np.ndarray, stderr: np.ndarray, frame_names: Sequence[str],
                        word_names: Sequence[str]) -> Image.Image:
    """``[F, G]`` cells on a symmetric red (+) / blue (−) scale, each with its value ± standard error; rows are
    framed in their frame group's colour, columns headed by their word group's letter."""
    cross = np.nan_to_num(np.asarray(cross, float))
    rows, cols = cross.shape
    left, top = 150, 44
    canvas = Image.new("RGB", (left + cols * CELL[0] + GAP, top + rows * CELL[1] + GAP), (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), caption_font(13)
    bound = float(np.abs(cross).max()) or 1.0
    lut = colour_table("RdBu_r")
    for j in range(cols):
        draw.rectangle([left + j * CELL[0] + 2, 4, left + (j + 1) * CELL[0] - 2, top - 6], fill=_word_colour(j))
        draw.text((left + j * CELL[0] + 6, 8), f"{_letter(j)}: {word_names[j]}"[:14], fill=(0, 0, 0), font=font)
    for i in range(rows):
        y = top + i * CELL[1]
        draw.rectangle([GAP, y + 2, GAP + 10, y + CELL[1] - 2], fill=_colour(i))
        draw.text((GAP + 16, y + 12), f"g{i + 1}: {frame_names[i]}"[:20], fill=(0, 0, 0), font=font)
        for j in range(cols):
            colour = tuple(int(c) for c in lut[int(round((cross[i, j] / bound + 1) / 2 * 255))])
            x = left + j * CELL[0]
            draw.rectangle([x, y, x + CELL[0] - 2, y + CELL[1] - 2], fill=colour)
            se = float(np.nan_to_num(stderr[i, j]))
            ink = (255, 255, 255) if sum(colour) < 330 else (0, 0, 0)  # white on the dark ends of the scale
            draw.text((x + 4, y + 12), f"{cross[i, j]:+.3f}" + (f"±{se:.3f}" if se > 0 else ""), fill=ink, font=font)
    return canvas


def video_hbi_picture(frames: np.ndarray, frame_groups: np.ndarray, words: Sequence[str], word_groups: np.ndarray,
                      cross: np.ndarray, stderr: np.ndarray, frame_names: Sequence[str],
                      word_names: Sequence[str]) -> Image.Image:
    """The frame strip (coloured by frame group) above the words (coloured by word group) above the heat map."""
    strip = frames_row(frames, frame_groups)
    heat = interaction_heatmap(cross, stderr, frame_names, word_names)
    width = max(strip.width, heat.width, 320)
    text = words_row(words, word_groups, width)
    canvas = Image.new("RGB", (width, strip.height + text.height + heat.height), (255, 255, 255))
    canvas.paste(strip, (0, 0))
    canvas.paste(text, (0, strip.height))
    canvas.paste(heat, (0, strip.height + text.height))
    return canvas
