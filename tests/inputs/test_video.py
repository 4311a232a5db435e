"""Video decoding: uniform sampling, frames in every accepted form, header bounds and clear errors."""
from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from PIL import Image

from tomviz.inputs import video as video_module
from tomviz.inputs.video import VideoLimits, example_clips, read_video, sample_indices

CODECS = {".mp4": "mpeg4", ".webm": "libvpx-vp9", ".gif": "gif"}


def numbered_frames(count: int, height: int = 32, width: int = 48) -> np.ndarray:
    """``[count, H, W, 3]`` uint8: frame i is a flat grey of level 8 * i (readable back after lossy coding)."""
    levels = (8 * np.arange(count)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (count, height, width, 3)).copy()


def write_clip(path, frames: np.ndarray, fps: int = 10) -> None:
    """Encode ``frames`` with PyAV into ``path`` (mp4, webm or gif by suffix)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODECS[path.suffix], rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "rgb8" if path.suffix == ".gif" else "yuv420p"
        if path.suffix == ".gif":
            stream.time_base = fractions.Fraction(1, 100)
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


def test_sample_indices_spread_evenly_first_and_last_included():
    assert sample_indices(10, 4) == [0, 3, 6, 9]
    assert sample_indices(901, 16)[:3] == [0, 60, 120] and sample_indices(901, 16)[-1] == 900
    assert sample_indices(3, 16) == [0, 1, 2]  # fewer frames than asked: all of them
    assert sample_indices(5, 1) == [0]
    with pytest.raises(ValueError, match="cannot sample"):
        sample_indices(0, 4)


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".gif"])
def test_clip_sampled_uniformly(tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    write_clip(path, numbered_frames(20))
    clip = read_video(path, num_frames=5)
    assert clip.frames.shape == (5, 32, 48, 3) and clip.frames.dtype == np.uint8
    assert clip.source_frames == 20
    assert clip.indices == (0, 5, 10, 14, 19)
    levels = clip.frames.reshape(5, -1).mean(axis=1)
    assert np.allclose(levels, [8 * i for i in clip.indices], atol=6)  # the right frames, not neighbours
    assert np.allclose(clip.timestamps, [i / 10 for i in clip.indices], atol=0.02)
    assert clip.fps == pytest.approx(10, rel=0.05)


def test_folder_and_list_of_frames(tmp_path):
    frames = numbered_frames(7)
    for i, array in enumerate(frames):
        Image.fromarray(array).save(tmp_path / f"f{i:02d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    clip = read_video(tmp_path, num_frames=3)
    assert clip.indices == (0, 3, 6) and np.array_equal(clip.frames, frames[[0, 3, 6]])
    from_arrays = read_video(list(frames), num_frames=3)
    assert np.array_equal(from_arrays.frames, clip.frames) and from_arrays.fps == 0.0
    from_images = read_video([Image.fromarray(a) for a in frames], num_frames=7)
    assert np.array_equal(from_images.frames, frames)


def test_frames_of_different_sizes_are_refused():
    with pytest.raises(ValueError, match="differs from the first frame"):
        read_video([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"expected \[H, W, 3\] uint8"):
        read_video([np.zeros((4, 4), np.uint8)])


def test_corrupt_file_gives_a_clear_message(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="broken.mp4: not a readable video"):
        read_video(path)
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    with pytest.raises(ValueError, match="no frame images"):
        read_video(empty_folder)
    with pytest.raises(ValueError, match="no such file"):
        read_video(tmp_path / "missing.mp4")


def test_file_without_a_video_stream(tmp_path):
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(ValueError, match="sound.wav: the file has no video stream"):
        read_video(path)


@pytest.mark.parametrize(
    "limits, message",
    [
        (VideoLimits(max_bytes=100), "file size"),
        (VideoLimits(max_pixels=32 * 47), "frame size 1536 pixels is over the limit of 1504 pixels"),
        (VideoLimits(max_seconds=1.5), "duration 2 s is over the limit of 1.5 s"),
        (VideoLimits(max_frames=19), "frame count 20 is over the limit of 19"),
    ],
)
def test_bounds_checked_before_decoding(tmp_path, monkeypatch, limits, message):
    path = tmp_path / "clip.mp4"
    write_clip(path, numbered_frames(20))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a clip that is over the bounds")

    monkeypatch.setattr(video_module, "_decode", no_decoding)
    with pytest.raises(ValueError, match=message):
        read_video(path, limits=limits)


def test_frame_list_bounds():
    with pytest.raises(ValueError, match="frame count 3 is over the limit of 2"):
        read_video(list(numbered_frames(3)), limits=VideoLimits(max_frames=2))
    with pytest.raises(ValueError, match="frame size"):
        read_video(list(numbered_frames(2)), limits=VideoLimits(max_pixels=10))


def test_example_clips_ship_with_gradio():
    clips = example_clips()
    assert {"world.mp4", "muted_b.mp4"} <= set(clips)
    clip = read_video(clips["muted_b.mp4"], num_frames=4)
    assert clip.frames.shape == (4, 270, 480, 3) and clip.source_frames == 150
    assert clip.indices == (0, 50, 99, 149)


def test_frame_files_checked_from_their_headers_before_any_decode(tmp_path, monkeypatch):
    """A folder whose last sampled frame is over the pixel bound: refused before any frame is decoded (the
    old order decoded each frame, then checked its size, so the first frames were decoded first)."""
    frames = numbered_frames(3)
    for i, array in enumerate(frames):
        Image.fromarray(array).save(tmp_path / f"f{i}.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "f3.png")  # 4096 pixels; the others 1536
    decoded = []
    real_load = Image.Image.load

    def counting_load(image, *args, **kwargs):
        decoded.append(getattr(image, "filename", None))
        return real_load(image, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "load", counting_load)
    with pytest.raises(ValueError, match="frame 3: frame size 4096 pixels is over the limit of 2000 pixels"):
        read_video(tmp_path, num_frames=4, limits=VideoLimits(max_pixels=2000))
    assert decoded == [], "a frame was decoded before every sampled frame's size was checked"
    monkeypatch.undo()
    with pytest.raises(ValueError, match="frame 3: size"):  # within the bound: decoded, then the sizes compared
        read_video(tmp_path, num_frames=4)
