"""Image bounds read from the header: bytes, pixels and frames refused before any decode."""
from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tomviz.inputs.limits import (MAX_FRAMES, MAX_PIXELS, ImageInputError, check_image, check_image_bytes,
                                  check_image_file)


def declared_png(width: int, height: int) -> bytes:
    """A PNG header declaring ``width`` × ``height`` greyscale pixels, with one empty IDAT: nothing to decode."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_pixels_are_refused_from_the_header(tmp_path):
    start = time.monotonic()
    for width, height in ((12_000, 12_000), (100_000, 100_000), (MAX_PIXELS // 1000 + 1, 1000)):
        with pytest.raises(ImageInputError, match="megapixels"):
            check_image_bytes(declared_png(width, height))
        path = tmp_path / "bomb.png"
        path.write_bytes(declared_png(width, height))
        with pytest.raises(ImageInputError, match=f"limit is {MAX_PIXELS / 1e6:.0f} megapixels"):
            check_image_file(path)
    assert time.monotonic() - start < 1.0  # nothing was decoded
    header = check_image_bytes(declared_png(4000, 3000))  # within the bound: the header, still nothing decoded
    assert (header.format, header.width, header.height, header.frames) == ("PNG", 4000, 3000, 1)


def test_bytes_and_frames_are_bounded(tmp_path):
    with pytest.raises(ImageInputError, match="at most 1 MiB"):
        check_image_bytes(declared_png(100, 100) + b"\0" * 2**20, max_bytes=2**20)
    with pytest.raises(ImageInputError, match="empty"):
        check_image_bytes(b"")
    frames = [Image.new("L", (8, 8), i % 256) for i in range(MAX_FRAMES + 1)]
    gif = tmp_path / "many.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=10)
    with pytest.raises(ImageInputError, match=f"{MAX_FRAMES + 1} frames"):
        check_image_file(gif)
    with Image.open(gif) as img:
        with pytest.raises(ImageInputError, match="frames"):
            check_image(img)


def test_non_images_and_missing_files_get_messages_without_paths(tmp_path):
    page = tmp_path / "page.png"
    page.write_text("<html></html>")
    for call in (lambda: check_image_file(page), lambda: check_image_bytes(page.read_bytes()),
                 lambda: check_image_file(tmp_path / "missing.png")):
        with pytest.raises(ImageInputError) as info:
            call()
        assert str(tmp_path) not in str(info.value)
    with pytest.raises(ImageInputError, match="not an image format"):
        check_image_file(page)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(declared_png(100, 100)[:20])
    with pytest.raises(ImageInputError):
        check_image_file(truncated)


def test_load_image_checks_the_header_first(tmp_path):
    from tomviz.models.preprocess import ImageInputError as PreprocessError, load_image

    assert PreprocessError is ImageInputError  # one error type, raised from the lowest layer
    path = tmp_path / "bomb.png"
    path.write_bytes(declared_png(12_000, 12_000))
    with pytest.raises(ImageInputError, match="megapixels"):
        load_image(path)
    with pytest.raises(ImageInputError, match="megapixels"):
        load_image(Path(path).read_bytes())
