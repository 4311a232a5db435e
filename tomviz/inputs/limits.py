"""Bounds on an image input, read from its header before any pixel is decoded.

``PIL.Image.open`` reads only a file's header: the format, the size and (for animations) the frame
table. :func:`check_image_file` and :func:`check_image_bytes` refuse, from that header alone, an
input whose bytes, pixels or frames exceed the bounds below, so that a small file declaring a huge
image (a "decompression bomb": a 140 KB PNG can declare 144 megapixels) costs nothing to refuse.
Decoding (``Image.load``) happens later, in the loaders, and only for inputs that passed.

Every refusal is an :class:`ImageInputError` whose message is written for a person and never names a
server path.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import IO, Union

from PIL import Image, UnidentifiedImageError

MAX_IMAGE_BYTES = 25 * 1024 * 1024
"""Encoded bytes of one image (the app's upload bound; a 50-megapixel phone JPEG fits)."""
MAX_PIXELS = 40_000_000
"""Pixels of one image (width × height, per frame)."""
MAX_FRAMES = 1000
"""Frames of an animated image (GIF, APNG, WebP, multi-page TIFF); only the first is used."""

__all__ = ["MAX_FRAMES", "MAX_IMAGE_BYTES", "MAX_PIXELS", "ImageHeader", "ImageInputError", "check_image",
           "check_image_bytes", "check_image_file", "check_pixels"]


class ImageInputError(ValueError):
    """The input cannot be used as an image; the message is meant for an end user."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares (nothing decoded)."""

    format: str  # PIL's format name, e.g. "PNG", "JPEG"
    width: int
    height: int
    frames: int
    nbytes: int  # encoded bytes


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} megapixels"


def check_pixels(width: int, height: int) -> None:
    """Refuse a ``width`` × ``height`` image with more than ``MAX_PIXELS`` pixels."""
    if width * height > MAX_PIXELS:
        raise ImageInputError(f"The image is {width}×{height} pixels ({_megapixels(width * height)}); "
                              f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels. Please use a smaller image.")


def check_image(img: Image.Image) -> None:
    """Refuse an opened (not yet loaded) PIL image with more than ``MAX_PIXELS`` pixels or ``MAX_FRAMES`` frames."""
    check_pixels(*img.size)
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > MAX_FRAMES:
        raise ImageInputError(f"The image has {frames} frames; at most {MAX_FRAMES} are accepted.")


def _check_size(nbytes: int, max_bytes: int) -> None:
    if nbytes > max_bytes:
        raise ImageInputError(f"The image file has {nbytes / 2**20:.1f} MiB; at most {max_bytes / 2**20:.0f} MiB "
                              "are accepted.")
    if nbytes == 0:
        raise ImageInputError("The image file is empty.")


def _read_header(handle: IO[bytes], nbytes: int) -> ImageHeader:
    """Open ``handle`` with PIL (header only) and check it; the file is never decoded here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our bound is lower and says more
        try:
            with Image.open(handle) as img:
                check_image(img)
                return ImageHeader(format=str(img.format), width=img.size[0], height=img.size[1],
                                   frames=int(getattr(img, "n_frames", 1) or 1), nbytes=nbytes)
        except ImageInputError:
            raise
        except Image.DecompressionBombError:
            raise ImageInputError(f"The image declares more pixels than can be opened safely; the limit is "
                                  f"{MAX_PIXELS / 1e6:.0f} megapixels.") from None
        except UnidentifiedImageError:
            raise ImageInputError("This file is not an image format that can be read (use PNG, JPEG, WebP, GIF, "
                                  "BMP or TIFF).") from None
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError) as err:
            raise ImageInputError(f"The image file is corrupt or truncated ({type(err).__name__}).") from None


def check_image_file(path: Union[str, os.PathLike], max_bytes: int = MAX_IMAGE_BYTES) -> ImageHeader:
    """Check the image file at ``path`` from its size on disk and its header; its header on success."""
    try:
        nbytes = os.stat(path).st_size
    except OSError:
        raise ImageInputError("The image file cannot be found.") from None
    _check_size(nbytes, max_bytes)
    with open(path, "rb") as handle:
        return _read_header(handle, nbytes)


def check_image_bytes(data: Union[bytes, bytearray, memoryview], max_bytes: int = MAX_IMAGE_BYTES) -> ImageHeader:
    """Check an image held in memory (e.g. decoded from a ``data:`` URL); its header on success."""
    _check_size(len(data), max_bytes)
    return _read_header(io.BytesIO(bytes(data)), len(data))
