"""Image loading and model preprocessing (pure PIL + numpy + torch).

Two steps, kept separate so the app can show exactly what the model sees:

* :func:`load_image` turns whatever a user hands over (a path, raw bytes, a numpy
  array, a PIL image) into a sane RGB ``PIL.Image``: EXIF orientation applied,
  first frame of an animation, every awkward mode converted, and hostile or
  useless inputs (decompression bombs, non-images, tiny or absurdly elongated
  images) refused with an :class:`ImageInputError` whose message is meant for
  a human.
* :func:`to_pixel_values` resizes that image to a model's input size and
  normalises it into a ``[1, 3, H, W]`` float32 tensor.

No center crop is ever applied: the whole image is resized to the model's
square input, so every patch token maps back onto the full picture.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from struct import error as struct_error
from typing import IO, Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from tomviz.inputs.limits import MAX_PIXELS, ImageInputError, check_image, check_pixels

__all__ = [
    "DINOV2_SPEC",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MIN_SIDE",
    "MAX_ASPECT",
    "ImageInputError",
    "ImageSource",
    "ImageSpec",
    "load_image",
    "resize_for_model",
    "spec_from_processor_config",
    "to_pixel_values",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# MAX_PIXELS: images with more pixels than this are refused from their header (decompression-bomb guard)
MAX_SIDE = 4096
"""Accepted images longer than this on a side are downscaled (thumbnail) to it."""
MIN_SIDE = 8
"""Images shorter than this on a side are refused."""
MAX_ASPECT = 20.0
"""Images more elongated than ``MAX_ASPECT : 1`` are refused."""

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Image.Image, IO[bytes]]


@dataclass(frozen=True)
class ImageSpec:
    """How a vision model wants its input.

    Attributes:
        size: final input size ``(height, width)`` in pixels.
        mean: per-channel (R, G, B) mean subtracted after scaling to [0, 1].
        std: per-channel (R, G, B) standard deviation divided by after that.
        resample: PIL resampling filter used to resize to ``size``.
    """

    size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: Image.Resampling = Image.Resampling.BICUBIC


DINOV2_SPEC = ImageSpec(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, resample=Image.Resampling.BICUBIC)
"""Input spec of the embedded DINOv2-S/14: 224x224 (16x16 patches + CLS), ImageNet mean/std."""


# --------------------------------------------------------------------------------------
# Processor configs
# --------------------------------------------------------------------------------------


def _square_side(value: Any, key: str) -> tuple[int, int]:
    """Read a HF ``size``/``crop_size`` entry into ``(height, width)``."""
    if isinstance(value, (int, float)):
        return int(value), int(value)
    if isinstance(value, Mapping):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value:
            side = int(value["shortest_edge"])
            return side, side
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ValueError(f"unsupported {key!r} in processor config: {value!r}")


def _triple(value: Any, default: tuple[float, float, float], key: str) -> tuple[float, float, float]:
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return (float(value),) * 3  # type: ignore[return-value]
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"{key!r} must have 3 values, got {value!r}")
    return values  # type: ignore[return-value]


def spec_from_processor_config(config: Mapping[str, Any]) -> ImageSpec:
    """Build an :class:`ImageSpec` from a HF ``preprocessor_config.json`` dict.

    Understands the keys used by ViT, DeiT, CLIP and DINOv2 image processors:
    ``size`` (``{"height", "width"}``, ``{"shortest_edge"}`` or an int), ``crop_size``,
    ``do_center_crop``, ``image_mean``, ``image_std``, ``do_normalize`` and ``resample``.
    The final input is square-resized (never cropped): its size is ``crop_size``
    when the processor center-crops, else ``size``. Missing mean/std default to
    ImageNet's; ``do_normalize: false`` gives mean 0 / std 1.
    """
    do_crop = bool(config.get("do_center_crop", False)) and config.get("crop_size") is not None
    if do_crop:
        size = _square_side(config["crop_size"], "crop_size")
    elif config.get("size") is not None:
        size = _square_side(config["size"], "size")
    elif config.get("crop_size") is not None:
        size = _square_side(config["crop_size"], "crop_size")
    else:
        raise ValueError("processor config has neither 'size' nor 'crop_size'")

    if config.get("do_normalize", True):
        mean = _triple(config.get("image_mean"), IMAGENET_MEAN, "image_mean")
        std = _triple(config.get("image_std"), IMAGENET_STD, "image_std")
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    resample = config.get("resample")
    resample_filter = Image.Resampling(int(resample)) if resample is not None else Image.Resampling.BICUBIC
    return ImageSpec(size=size, mean=mean, std=std, resample=resample_filter)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _check_geometry(width: int, height: int) -> None:
    """Refuse images that are too big (before decoding), too small or too elongated."""
    check_pixels(width, height)
    if min(width, height) < MIN_SIDE:
        raise ImageInputError(
            f"The image is only {width}×{height} pixels; each side must be at least {MIN_SIDE} pixels."
        )
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        raise ImageInputError(
            f"The image is {width}×{height} pixels, an aspect ratio of {aspect:.0f}:1; "
            f"images more elongated than {MAX_ASPECT:.0f}:1 are not supported."
        )


def _rescale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map a numeric array to uint8 [0, 255], guessing its value range.

    uint8 is kept; bool → {0, 255}; uint16 (and ints within 0..65535) → /257;
    floats within [0, 1] → ×255; values within [0, 255] are kept; anything
    else is min-max normalised.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            out = arr * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            out = arr
        else:
            out = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if arr.dtype == np.uint16 or (lo >= 0 and hi > 255 and hi <= 65535):
            return np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)
        if lo >= 0 and hi <= 255:
            return arr.astype(np.uint8)
        scaled = (arr.astype(np.float64) - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros(arr.shape)
        return np.rint(scaled).astype(np.uint8)
    raise ImageInputError(f"Arrays of type {arr.dtype} cannot be read as an image.")


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` (C in 1, 3, 4) array → PIL image (L, RGB or RGBA)."""
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW → HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageInputError(
            f"An array of shape {tuple(arr.shape)} is not an image; expected [H, W], [H, W, 3] or [H, W, 4]."
        )
    height, width = arr.shape[:2]
    _check_geometry(width, height)
    return Image.fromarray(np.ascontiguousarray(_rescale_to_uint8(arr)))  # uint8: L, RGB or RGBA


def _composite_on_white(img: Image.Image) -> Image.Image:
    """Flatten any image with alpha onto a white background → RGB."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(img: Image.Image, copy: bool = True) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    16/32-bit integer and float greyscale are rescaled (not clipped) to 8 bits;
    alpha (LA, RGBA, PA, palette transparency) is composited over white. The result
    is always a new image, except an RGB input with ``copy=False``.
    """
    mode = img.mode
    if mode == "RGB":
        return img.copy() if copy else img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_rescale_to_uint8(np.asarray(img))).convert("RGB")  # uint8 [H, W] → L
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _composite_on_white(img)
    if mode in ("L", "1", "P", "CMYK", "YCbCr", "RGBX", "HSV"):
        return img.convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageInputError(f"Images in colour mode {mode!r} are not supported.") from exc


def _open(src: Any) -> Image.Image:
    """Open a path, bytes or file object with PIL (lazy: header only)."""
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise ImageInputError(f"No image file at {path!r}.")
        return Image.open(path)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise ImageInputError("The uploaded file is empty.")
        return Image.open(io.BytesIO(data))
    if hasattr(src, "read"):
        return Image.open(src)
    raise ImageInputError(f"Cannot read an image from a {type(src).__name__}.")


def _first_frame(img: Image.Image) -> Image.Image:
    if getattr(img, "n_frames", 1) > 1 and img.tell() != 0:
        img.seek(0)
    return img


def _exif_transposed(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block is ignored (best effort)."""
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError, struct_error):
        return img.copy()


def load_image(src: ImageSource) -> Image.Image:
    """Load a user image as a clean 8-bit RGB PIL image.

    Args:
        src: a file path, the raw bytes of an image file, a binary file object,
            a numpy array (``[H, W]``, ``[H, W, 3|4]`` or ``[3|4, H, W]``; uint8,
            uint16, bool or float) or a PIL image.

    Returns:
        A new RGB image (the input is never modified), EXIF orientation applied,
        first frame only, at most :data:`MAX_SIDE` pixels on its longer side.

    Raises:
        ImageInputError: for non-images, corrupt or truncated files, decompression
            bombs or images over :data:`MAX_PIXELS`, sides under :data:`MIN_SIDE`,
            or aspect ratios beyond :data:`MAX_ASPECT`.
    """
    if isinstance(src, np.ndarray):
        img = _array_to_pil(src)
    else:
        # Pillow warns (DecompressionBombWarning) between MAX_IMAGE_PIXELS and twice that, and
        # raises above; turn the warning into an error too. (Our own MAX_PIXELS is lower anyway.)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = src if isinstance(src, Image.Image) else _open(src)
                check_image(img)  # pixels and frames, from the header
                _check_geometry(*img.size)
                img = _first_frame(img)
                img.load()
                img = _exif_transposed(img)
            except ImageInputError:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageInputError(
                    f"The image is too large to open safely (a possible decompression bomb); "
                    f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels."
                ) from exc
            except UnidentifiedImageError as exc:
                raise ImageInputError("This file is not an image format that can be read.") from exc
            except (OSError, ValueError, SyntaxError, EOFError, struct_error) as exc:
                raise ImageInputError(f"The image file is corrupt or truncated ({exc}).") from exc

    img = _to_rgb(img, copy=False)  # img is already our own copy
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return img


# --------------------------------------------------------------------------------------
# Model input
# --------------------------------------------------------------------------------------


def resize_for_model(img: Image.Image, spec: ImageSpec) -> Image.Image:
    """Resize ``img`` to ``spec.size`` (no crop, aspect not kept): exactly what the model sees.

    Returns an RGB image of ``spec.size[1] × spec.size[0]`` (PIL's width × height).
    """
    rgb = _to_rgb(img, copy=False)
    height, width = spec.size
    if rgb.size == (width, height):
        return rgb.copy()
    return rgb.resize((width, height), resample=spec.resample)


def to_pixel_values(img: Image.Image, spec: ImageSpec) -> torch.Tensor:
    """Resize and normalise an image into model input.

    Args:
        img: a PIL image (any mode; see :func:`load_image` for untrusted input).
        spec: the model's :class:`ImageSpec`.

    Returns:
        ``[1, 3, H, W]`` float32 tensor, ``(x / 255 - mean) / std`` per channel,
        with ``(H, W) = spec.size``.
    """
    arr = np.asarray(resize_for_model(img, spec), dtype=np.float32) / 255.0  # [H, W, 3]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    arr = (arr - mean) / std
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]  # [1, 3, H, W]

