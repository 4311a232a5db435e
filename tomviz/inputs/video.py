"""Video in: a clip (mp4, webm, gif, ...) or a folder / list of frames → a few uniformly sampled RGB frames.

Decoding uses PyAV (its wheel bundles FFmpeg's libraries). The bounds of :class:`VideoLimits` (bytes,
seconds, frames, pixels per frame) are checked from the file's size and the container's header *before*
any frame is decoded, so an oversized upload costs a header read, not a decode. Anything that is not a
readable clip — a corrupt file, a file without a video stream, frames of different sizes — raises a
``ValueError`` whose message says what is wrong, for the UI and the CLI to show as is.

Sampling: ``num_frames`` frame indices spread evenly over the clip (``round(linspace(0, F - 1, n))``, the
first and last frame included), decoded in one sequential pass that stops after the last wanted frame.
Where the header's frame count is missing (webm, some gif) the packets are counted first (no decoding).
A clip whose stream ends before its header says (a truncated file) gives the wanted frames it holds.

Offline examples: :func:`example_clips` lists the clips that ship inside the installed ``gradio`` package
(``gradio/media_assets/videos/``; gradio is Apache-2.0, the clips are gradio's demo media), so nothing is
downloaded or copied into this repository.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# files the API and the CLI take as clips by their name (a GIF stays an image there, as before: pass
# read_video("x.gif") to read one as a clip)
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
EXAMPLE_ATTRIBUTION = "Example clips from the gradio package (Apache-2.0), gradio/media_assets/videos/."


@dataclass(frozen=True)
class VideoLimits:
    """What a clip may be, checked before decoding (the defaults suit a public server)."""

    max_bytes: int = 64 * 2**20  # file size (a folder of frames: the sum of its files)
    max_seconds: float = 10 * 60.0  # duration from the header
    max_frames: int = 20_000  # frames in the clip (header, or packets counted)
    max_pixels: int = 1920 * 1088  # width x height of one frame


UPLOAD_LIMITS = VideoLimits(max_bytes=25 * 2**20)  # the app's uploads (its 25 MB file bound) and the bench's clips
@dataclass(frozen=True)
class Video:
    """Sampled frames of one clip."""

    frames: np.ndarray  # [T, H, W, 3] uint8 RGB
    timestamps: tuple[float, ...]  # seconds, one per sampled frame
    fps: float  # frames per second of the source (0.0 when unknown, e.g. a list of frames)
    source_frames: int  # frames in the source clip
    indices: tuple[int, ...]  # index in the source of each sampled frame

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]


def sample_indices(total: int, num_frames: int) -> list[int]:
    """``min(num_frames, total)`` distinct indices spread evenly over ``0..total-1``, first and last included."""
    if total <= 0 or num_frames <= 0:
        raise ValueError(f"cannot sample {num_frames} frames from a clip of {total} frames")
    count = min(num_frames, total)
    if count == 1:
        return [0]
    return sorted({int(round(i * (total - 1) / (count - 1))) for i in range(count)})


def read_video(
    source: str | os.PathLike | Sequence, num_frames: int = 16, limits: VideoLimits = VideoLimits()
) -> Video:
    """Decode ``source`` into at most ``num_frames`` frames sampled uniformly over time.

    source: a video file, a folder of frame images (sorted by name), a list of image paths, or a list of
    ``[H, W, 3]`` uint8 arrays / PIL images. Raises ``ValueError`` with a readable message for anything else.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
            if not files:
                raise ValueError(f"{path.name}: the folder holds no frame images ({', '.join(FRAME_SUFFIXES)})")
            return _read_frames(files, num_frames, limits)
        if not path.is_file():
            raise ValueError(f"{path}: no such file or folder")
        return _read_clip(path, num_frames, limits)
    return _read_frames(list(source), num_frames, limits)


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as error:
        raise ValueError(f"{path.name}: not a readable video (corrupt or unknown format: {error})") from error


def _check(name: str, what: str, value: float, bound: float, unit: str) -> None:
    if value > bound:
        raise ValueError(f"{name}: {what} {value:g}{unit} is over the limit of {bound:g}{unit}")


def _read_clip(path: Path, num_frames: int, limits: VideoLimits) -> Video:
    import av

    _check(path.name, "file size", path.stat().st_size / 2**20, limits.max_bytes / 2**20, " MiB")
    with _open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path.name}: the file has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        _check(path.name, "frame size", width * height, limits.max_pixels, " pixels")
        seconds = _duration(container, stream)
        _check(path.name, "duration", seconds, limits.max_seconds, " s")
        total = stream.frames or _count_packets(container, stream, limits.max_frames, path.name)
        _check(path.name, "frame count", total, limits.max_frames, "")
        fps = float(stream.average_rate) if stream.average_rate else (total / seconds if seconds else 0.0)
        wanted = sample_indices(total, num_frames)
        try:
            frames, times, indices = _decode(container, stream, set(wanted), wanted[-1])
        except av.FFmpegError as error:
            raise ValueError(f"{path.name}: the video stream is corrupt ({error})") from error
    if not frames:
        raise ValueError(f"{path.name}: no frame could be decoded")
    return Video(np.stack(frames), tuple(times), fps, total, tuple(indices))


def _duration(container, stream) -> float:
    """Seconds from the stream header, else the container's (0.0 when neither says)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / 1_000_000 if container.duration else 0.0


def _count_packets(container, stream, bound: int, name: str) -> int:
    """Frames counted from the packets (no decoding), stopping past ``bound``; then rewinds."""
    count = 0
    for packet in container.demux(stream):
        count += packet.size > 0
        if count > bound:
            break
    container.seek(0, stream=stream)
    if count == 0:
        raise ValueError(f"{name}: the video stream holds no frames")
    return count


def _decode(container, stream, wanted: set[int], last: int) -> tuple[list[np.ndarray], list[float], list[int]]:
    """One pass over the frames, keeping those whose index is in ``wanted``."""
    frames, times, indices = [], [], []
    for index, frame in enumerate(container.decode(stream)):
        if index in wanted:
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time) if frame.time is not None else 0.0)
            indices.append(index)
        if index >= last:
            break
    return frames, times, indices


def _read_frames(items: list, num_frames: int, limits: VideoLimits) -> Video:
    """A list of image paths, arrays or PIL images, sampled like a clip (no timing: timestamps are indices).

    Every sampled frame's size is checked before any frame is decoded: a path's from its image header
    (``PIL.Image.open`` reads only the header), an array's or an image's from its shape."""
    if not items:
        raise ValueError("no frames given")
    _check("frames", "frame count", len(items), limits.max_frames, "")
    paths = [Path(item) for item in items if isinstance(item, (str, os.PathLike))]
    _check("frames", "total size", sum(p.stat().st_size for p in paths) / 2**20, limits.max_bytes / 2**20, " MiB")
    wanted = sample_indices(len(items), num_frames)
    opened = {index: _frame_header(items[index], index) for index in wanted}  # headers only, nothing decoded
    for index, image in opened.items():
        height, width = image.shape[:2] if isinstance(image, np.ndarray) else (image.height, image.width)
        _check(f"frame {index}", "frame size", width * height, limits.max_pixels, " pixels")
    frames = []
    for index, image in opened.items():
        array = _decode_frame(image, index)
        if frames and array.shape != frames[0].shape:
            raise ValueError(f"frame {index}: size {array.shape[:2]} differs from the first frame's {frames[0].shape[:2]}")
        frames.append(array)
    return Video(np.stack(frames), tuple(float(i) for i in wanted), 0.0, len(items), tuple(wanted))


def _frame_header(item, index: int):
    """A path opened lazily (PIL reads the header: size, mode), or the array / image as given."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        try:
            return Image.open(item)
        except (OSError, ValueError) as error:
            raise ValueError(f"frame {index}: not a readable image ({error})") from error
    if isinstance(item, Image.Image):
        return item
    array = np.asarray(item)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"frame {index}: expected [H, W, 3] uint8 RGB, got {array.shape} {array.dtype}")
    return array


def _decode_frame(image, index: int) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB from what :func:`_frame_header` gave (a lazily opened file is decoded here)."""
    if isinstance(image, np.ndarray):
        return image
    try:
        return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as error:
        raise ValueError(f"frame {index}: not a readable image ({error})") from error


def example_clips() -> dict[str, Path]:
    """Clips shipped inside the installed gradio package (name → path), e.g. ``world.mp4`` (a rotating
    globe on black, 901 frames, 480x270). See ``EXAMPLE_ATTRIBUTION``."""
    import gradio

    folder = Path(gradio.__file__).parent / "media_assets" / "videos"
    return {p.name: p for p in sorted(folder.glob("*.mp4"))} if folder.is_dir() else {}
