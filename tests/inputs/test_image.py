"""load_image / to_pixel_values / spec_from_processor_config."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tomviz.inputs import image as image_inputs
from tomviz.inputs.image import (
    DINOV2_SPEC,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageInputError,
    ImageSpec,
    load_image,
    spec_from_processor_config,
    to_pixel_values,
)


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A syntactically valid PNG claiming ``width × height`` (8-bit grey) with a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------- modes


def test_rgb_roundtrip_and_copy() -> None:
    src = Image.new("RGB", (32, 24), (10, 20, 30))
    out = load_image(src)
    assert out.mode == "RGB" and out.size == (32, 24)
    assert out is not src
    assert out.getpixel((0, 0)) == (10, 20, 30)


def test_16bit_greyscale_is_rescaled_not_clipped() -> None:
    arr = np.full((16, 16), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    arr[0, 1] = 32896  # ≈ 128 × 257
    data = _encode(Image.fromarray(arr), "PNG")
    src = Image.open(io.BytesIO(data))
    assert src.mode in ("I;16", "I")
    out = load_image(data)
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (128, 128, 128)


def test_32bit_int_mode() -> None:
    img = Image.fromarray(np.full((10, 10), 1000, dtype=np.int32), mode="I")
    img.putpixel((0, 0), 0)
    out = load_image(img)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((3, 3)) == (4, 4, 4)  # 1000 / 257 (16-bit range)


def test_float_mode() -> None:
    img = Image.fromarray(np.full((10, 10), 0.5, dtype=np.float32), mode="F")
    data = _encode(img, "TIFF")
    out = load_image(data)
    assert out.mode == "RGB"
    assert out.getpixel((2, 2)) == (128, 128, 128)


def test_cmyk() -> None:
    img = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # pure red in CMYK
    for data in (_encode(img, "JPEG", quality=95), _encode(img, "TIFF")):
        out = load_image(data)
        assert out.mode == "RGB"
        r, g, b = out.getpixel((10, 10))
        assert r > 200 and g < 60 and b < 60


def test_palette_with_transparency_composites_on_white() -> None:
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    img.putpixel((0, 0), 1)
    img.info["transparency"] = 0  # index 0 (black) is transparent
    out = load_image(_encode(img, "PNG", transparency=0))
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)


def test_palette_without_transparency() -> None:
    img = Image.new("RGB", (20, 20), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    out = load_image(_encode(img, "GIF"))
    assert out.mode == "RGB"
    assert out.getpixel((3, 3)) == (0, 128, 255)


@pytest.mark.parametrize(("mode", "colour"), [("LA", (0, 0)), ("RGBA", (255, 0, 0, 0))])
def test_transparent_alpha_becomes_white(mode: str, colour: tuple[int, ...]) -> None:
    img = Image.new(mode, (20, 20), colour)
    opaque = (100, 255) if mode == "LA" else (0, 0, 255, 255)
    img.putpixel((0, 0), opaque)
    out = load_image(_encode(img, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((10, 10)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == ((100, 100, 100) if mode == "LA" else (0, 0, 255))


def test_half_transparent_rgba_blends() -> None:
    out = load_image(Image.new("RGBA", (10, 10), (0, 0, 0, 128)))
    assert out.getpixel((1, 1)) == (127, 127, 127)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale_and_bilevel(mode: str) -> None:
    img = Image.new(mode, (20, 20), 255 if mode == "L" else 1)
    out = load_image(_encode(img, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (255, 255, 255)


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = load_image(data)
    assert out.mode == "RGB" and out.getpixel((10, 10)) == (255, 0, 0)
    # A PIL image left on a later frame is rewound to the first one.
    src = Image.open(io.BytesIO(data))
    src.seek(2)
    assert load_image(src).getpixel((10, 10)) == (255, 0, 0)


# ---------------------------------------------------------------------------------- sources


def test_path_and_file_object(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.new("RGB", (30, 20), (1, 2, 3)).save(path)
    assert load_image(path).size == (30, 20)
    assert load_image(str(path)).size == (30, 20)
    with open(path, "rb") as fh:
        assert load_image(fh).getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(ImageInputError, match="No image file"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize(
    ("array", "pixel"),
    [
        (np.full((12, 10, 3), 200, np.uint8), (200, 200, 200)),
        (np.full((12, 10), 1.0, np.float32), (255, 255, 255)),
        (np.full((12, 10), 65535, np.uint16), (255, 255, 255)),
        (np.full((12, 10, 1), 7, np.uint8), (7, 7, 7)),
        (np.full((3, 12, 10), 9, np.uint8), (9, 9, 9)),  # CHW
        (np.ones((12, 10), bool), (255, 255, 255)),
        (np.dstack([np.zeros((12, 10, 3), np.uint8), np.zeros((12, 10), np.uint8)]), (255, 255, 255)),
    ],
)
def test_numpy_inputs(array: np.ndarray, pixel: tuple[int, int, int]) -> None:
    out = load_image(array)
    assert out.mode == "RGB" and out.size == (10, 12)
    assert out.getpixel((4, 4)) == pixel


def test_bad_numpy_shape() -> None:
    with pytest.raises(ImageInputError, match="shape"):
        load_image(np.zeros((4, 12, 10, 3), np.uint8))


# ---------------------------------------------------------------------------------- EXIF


def test_exif_orientation_applied() -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # red square at the top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = _encode(img, "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(data)
    assert out.size == (20, 40)
    r, g, b = out.getpixel((15, 4))  # top-left moved to the top-right
    assert r > 200 and b < 60
    r, g, b = out.getpixel((4, 4))
    assert b > 200 and r < 60


# ---------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (7100, 7100),  # 50 MP: above our 40 MP limit, below Pillow's own warning
        (10_000, 10_000),  # 100 MP: Pillow's DecompressionBombWarning
        (20_000, 20_000),  # 400 MP: Pillow's DecompressionBombError
    ],
)
def test_decompression_bomb_refused(width: int, height: int) -> None:
    with pytest.raises(ImageInputError, match="40 megapixels"):
        load_image(_png_header(width, height))


def test_bomb_refused_even_if_pillow_guard_is_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageInputError, match="40 megapixels"):
        load_image(_png_header(20_000, 20_000))


def test_large_image_is_downscaled() -> None:
    out = load_image(Image.new("RGB", (5000, 1000), (5, 5, 5)))
    assert out.size == (4096, 819)


@pytest.mark.parametrize("size", [(5, 100), (100, 7), (1, 1)])
def test_tiny_refused(size: tuple[int, int]) -> None:
    with pytest.raises(ImageInputError, match="at least 8 pixels"):
        load_image(Image.new("RGB", size))


def test_extreme_aspect_refused() -> None:
    with pytest.raises(ImageInputError, match="20:1"):
        load_image(_encode(Image.new("RGB", (10, 300)), "PNG"))
    assert load_image(Image.new("RGB", (10, 200))).size == (10, 200)  # exactly 20:1 is fine


@pytest.mark.parametrize(
    "data",
    [b"this is not an image", b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 10, b"GIF89a"],
)
def test_garbage_refused(data: bytes) -> None:
    with pytest.raises(ImageInputError):
        load_image(data)


def test_truncated_file_refused() -> None:
    rng = np.random.default_rng(0)
    data = _encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(ImageInputError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_error_is_value_error() -> None:
    assert issubclass(ImageInputError, ValueError)
    with pytest.raises(ValueError):
        load_image(123)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- tensors


def test_to_pixel_values_shape_and_normalisation() -> None:
    x = to_pixel_values(Image.new("RGB", (300, 200), (255, 255, 255)), DINOV2_SPEC)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    expected = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 100, 100], expected)


def test_to_pixel_values_channel_order_and_size() -> None:
    spec = ImageSpec(size=(32, 48), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x = to_pixel_values(Image.new("RGB", (48, 32), (255, 0, 0)), spec)
    assert x.shape == (1, 3, 32, 48)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert to_pixel_values(Image.new("L", (20, 20), 255), spec).shape == (1, 3, 32, 48)


def test_dinov2_spec() -> None:
    assert DINOV2_SPEC.size == (224, 224)
    assert DINOV2_SPEC.mean == IMAGENET_MEAN and DINOV2_SPEC.std == IMAGENET_STD
    assert DINOV2_SPEC.resample == Image.Resampling.BICUBIC


# ---------------------------------------------------------------------------------- processor configs


def test_spec_vit_style() -> None:
    spec = spec_from_processor_config(
        {"do_resize": True, "size": {"height": 224, "width": 224}, "image_mean": [0.5] * 3,
         "image_std": [0.5] * 3, "resample": 2}
    )
    assert spec == ImageSpec((224, 224), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), Image.Resampling.BILINEAR)


def test_spec_deit_style_uses_crop() -> None:
    spec = spec_from_processor_config(
        {"size": {"height": 256, "width": 256}, "crop_size": {"height": 224, "width": 224},
         "do_center_crop": True, "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD),
         "resample": 3}
    )
    assert spec == ImageSpec((224, 224), IMAGENET_MEAN, IMAGENET_STD, Image.Resampling.BICUBIC)


def test_spec_clip_and_dinov2_hub_style() -> None:
    clip = spec_from_processor_config(
        {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
         "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
    )
    assert clip.size == (224, 224) and clip.mean[0] == pytest.approx(0.48145466)
    dinov2 = spec_from_processor_config(
        {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True}
    )
    assert dinov2 == DINOV2_SPEC
    no_crop = spec_from_processor_config({"size": {"shortest_edge": 256}, "crop_size": 224, "do_center_crop": False})
    assert no_crop.size == (256, 256)
    legacy = spec_from_processor_config({"size": 384, "do_normalize": False})
    assert legacy == ImageSpec((384, 384), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_spec_without_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="size"):
        spec_from_processor_config({"image_mean": [0.5] * 3})


def test_limits_are_exposed() -> None:
    assert image_inputs.MAX_PIXELS == 40_000_000 and image_inputs.MAX_SIDE == 4096
    assert image_inputs.MIN_SIDE == 8 and image_inputs.MAX_ASPECT == 20


def test_the_old_module_is_a_deprecated_reexport():
    import importlib
    import sys

    sys.modules.pop("tomviz.models.preprocess", None)
    with pytest.warns(DeprecationWarning, match="removed in tomviz 0.2.0"):
        old = importlib.import_module("tomviz.models.preprocess")
    assert old.load_image is image_inputs.load_image and old.ImageInputError is ImageInputError
