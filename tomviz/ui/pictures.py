"""Pictures that travel inside an event's answer, as ``data:`` URLs.

Gradio sends a picture output as a file: it encodes the picture, writes it under its cache and answers with
the file's URL; the page then fetches each picture with a request of its own. Chromium opens at most six
connections to one server and Gradio's heartbeat holds one, so of six pictures the sixth waits for a free
connection, and each request is served by the same busy Python process that answers events.

An answer that only the page reads (a ratio release answered from memory, :func:`tomviz.ui.lifecycle.from_memory`)
carries its pictures inline instead: the handler wraps them with :func:`inline`, and :class:`Picture` (``gr.Image``'s
front end) sends an :class:`Inline` value as a ``data:`` URL in its own format. No file is written and the page
shows the pictures as soon as it has the answer. Every other value goes as ``gr.Image`` sends it: events with an
API endpoint keep answering with files, which a ``gradio_client`` caller downloads.
"""
from __future__ import annotations

import base64
import functools
import io
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.data_classes import ImageData
from PIL import Image

# PIL's encoder options per format: JPEG at PIL's default quality (what gr.Image sends), PNG lossless at zlib's
# fastest level (the same pixels; ≈ 3 ms instead of ≈ 8 ms for a 560 × 300 chart, a few KB more).
ENCODING = {"jpeg": dict(quality=75), "png": dict(compress_level=1), "webp": dict(quality=80)}


@dataclass(frozen=True)
class Inline:
    """A picture to send inside the answer (see the module docstring)."""

    picture: Image.Image


def inline(values: tuple) -> tuple:
    """``values`` (an event's outputs) with every PIL picture wrapped in :class:`Inline`, the rest as given."""
    return tuple(Inline(value) if isinstance(value, Image.Image) else value for value in values)


def data_url(picture: Image.Image, format: str) -> str:
    """``picture`` encoded as ``format`` ("jpeg", "png" or "webp", see :data:`ENCODING`) in a ``data:`` URL."""
    format = format.lower()
    if format == "jpeg" and picture.mode not in ("RGB", "L"):
        picture = picture.convert("RGB")
    with io.BytesIO() as out:
        picture.save(out, format=format, **ENCODING.get(format, {}))
        encoded = base64.b64encode(out.getvalue()).decode("ascii")
    return f"data:image/{format};base64,{encoded}"


class Picture(gr.Image):
    """``gr.Image``'s front end (``is_template``) as an output that also sends :class:`Inline` values inside the
    answer, as ``data:`` URLs in the component's ``format``."""

    is_template = True

    @functools.wraps(gr.Image.__init__)  # gr.Image's signature: Gradio builds the page's props from it
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    def postprocess(self, value: Any) -> ImageData | None:
        if isinstance(value, Inline):
            return ImageData(url=data_url(value.picture, self.format), orig_name=f"image.{self.format.lower()}")
        return super().postprocess(value)
