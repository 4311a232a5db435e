"""The bounded image input, Markdown escaping and the heavy-work watchdog (no server)."""
from __future__ import annotations

import base64
import threading
import time

import gradio as gr
import pytest
from gradio.data_classes import ImageData

from tests.inputs.test_limits import declared_png
from tomviz.inputs.limits import ImageInputError
from tomviz.ui.guards import ImageFile, Watchdog, decode_data_url, escape_markdown, save_inline_image


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_data_urls_are_bounded_before_they_are_decoded(tmp_path, monkeypatch):
    decoded = []
    monkeypatch.setattr(base64, "b64decode", lambda *a, **k: decoded.append(1))
    with pytest.raises(ImageInputError, match="at most 1 MiB"):
        decode_data_url("data:image/png;base64," + "A" * (2 * 2**20), max_bytes=2**20)
    assert not decoded  # refused from the length
    monkeypatch.undo()
    for bad in ("data:image/png,abc", "http://x/y.png", "data:image/png;base64,***"):
        with pytest.raises(ImageInputError):
            decode_data_url(bad)
    with pytest.raises(ImageInputError, match="megapixels"):
        save_inline_image(data_url(declared_png(12_000, 12_000)), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written for a refused image
    cat = open("assets/chelsea.png", "rb").read()
    path = save_inline_image(data_url(cat), tmp_path)
    assert path.endswith(".png") and open(path, "rb").read() == cat


def test_image_file_hands_on_checked_paths_and_clean_errors(tmp_path):
    component = ImageFile(type="pil", sources=["upload"])
    assert component.type == "filepath" and component.image_mode is None
    config = component.get_config()  # the page's props come from gr.Image's signature (a missing one breaks the page)
    assert config["sources"] == ["upload"] and config["type"] == "filepath"
    assert set(gr.Image(sources=["upload"]).get_config()) <= set(config)
    assert component.preprocess(ImageData(path="assets/chelsea.png")) == "assets/chelsea.png"
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(declared_png(12_000, 12_000))
    page = tmp_path / "page.png"
    page.write_text("not an image")
    for path, message in ((bomb, "megapixels"), (page, "not an image format")):
        with pytest.raises(gr.Error, match=message) as info:
            component.preprocess(ImageData(path=str(path)))
        assert str(tmp_path) not in str(info.value) and info.value.__cause__ is None
    assert component.preprocess(None) is None


def test_escape_markdown_keeps_the_text_literal():
    text = "x/y <img src=x onerror=1> **[a](http://e)** `c`\x00\nnext"
    escaped = escape_markdown(text, 400)
    for raw in ("<img", "**[", "](", "`c`", "\x00", "\n"):
        assert raw not in escaped
    assert escape_markdown("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
    assert len(escape_markdown("a" * 500)) == 100


def busy(seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # pure Python: the watchdog's exception arrives between two bytecodes
        pass
    return "done"


def test_watchdog_stops_work_at_its_budget_or_when_the_visitor_leaves():
    dog = Watchdog(poll_s=0.05)
    start = time.monotonic()
    with pytest.raises(gr.Error, match="budget of 0.3 s"):
        dog.run(busy, 0.3, lambda: True, 30)
    assert time.monotonic() - start < 5
    left = threading.Event()
    threading.Timer(0.3, left.set).start()
    with pytest.raises(gr.Error, match="left"):
        dog.run(busy, 60, lambda: not left.is_set(), 30)
    assert dog.run(busy, 5, lambda: True, 0.1) == "done"  # within its budget: the answer
    busy(0.5)  # nothing stray arrives after a watched call returned
    assert not dog._watches


def test_watchdog_errors_raised_inside_user_errors_keep_the_reason():
    from tomviz.ui.common import user_errors

    def wrapped():
        with user_errors("estimate"):
            return busy(30)

    with pytest.raises(gr.Error, match="budget") as info:
        Watchdog(poll_s=0.05).run(wrapped, 0.2, lambda: True)
    assert "WorkStopped" not in str(info.value)
