"""Pictures inside an answer (tomviz/ui/pictures.py): an Inline value goes as a data: URL that decodes to the
picture, through Gradio's own output path (no file, no fetch); any other value goes as gr.Image sends it."""
from __future__ import annotations

import base64
import io

import gradio as gr
import numpy as np
import pytest
from gradio import processing_utils
from PIL import Image

from tomviz.ui.pictures import Inline, Picture, data_url, inline


def _picture() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))


def _decode(url: str) -> Image.Image:
    header, encoded = url.split(",", 1)
    assert header.startswith("data:image/") and header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(encoded)))


def test_png_data_url_holds_the_same_pixels_and_jpeg_the_same_size():
    picture = _picture()
    png = _decode(data_url(picture, "png"))
    assert png.format == "PNG" and np.array_equal(np.asarray(png.convert("RGB")), np.asarray(picture))
    jpeg = _decode(data_url(picture.convert("RGBA"), "jpeg"))  # RGBA: converted, as JPEG has no alpha
    assert jpeg.format == "JPEG" and jpeg.size == picture.size


def test_inline_wraps_only_pictures():
    picture = _picture()
    skip = gr.skip()
    wrapped = inline((picture, "text", None, skip))
    assert isinstance(wrapped[0], Inline) and wrapped[0].picture is picture and wrapped[1:] == ("text", None, skip)


@pytest.mark.parametrize("format", ["png", "jpeg"])
def test_an_inline_value_is_sent_as_a_data_url_through_gradios_output_path(format):
    with gr.Blocks():
        component = Picture(format=format)
    sent = processing_utils.move_files_to_cache(component.postprocess(Inline(_picture())).model_dump(), component,
                                                postprocess=True)
    assert sent["path"] is None and sent["url"].startswith(f"data:image/{format};base64,")  # no file in the cache
    assert _decode(sent["url"]).size == (40, 30)


def test_any_other_value_is_sent_as_a_file_like_gr_image():
    with gr.Blocks():
        component = Picture(format="png")
    sent = component.postprocess(_picture())
    assert sent.path and sent.path.endswith(".png") and sent.url is None
    assert component.get_block_name() == "image"  # gr.Image's front end
