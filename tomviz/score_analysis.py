"""What the Scores tab computes: one model run, then a Banzhaf or image × text (HBI) estimate, without gradio;
and :func:`video_hbi`, frames × words of a clip (the Video tab's HBI section).

Each function loads the model by name (``untrusted=True``: the name comes from a visitor; the front end
picks the default when it is empty), inspects the
input once with the hidden states kept, and plays the game on the groups after a 1-based layer. The
:class:`ScoreSession` it returns is small and CPU-only (numpy results and the photo at display size), so a
front end keeps it per visitor and re-renders from it without running the model again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

import tomviz
from tomviz.inputs.video import Video, VideoLimits, read_video, sample_indices
from tomviz.models.xclip import is_xclip, load_video_text
from tomviz.render.overlay import display_image
from tomviz.render.video_hbi import video_hbi_picture
from tomviz.scores.attention import rollout_grid
from tomviz.scores.banzhaf import BanzhafResult, banzhaf
from tomviz.scores.hbi import HBIResult, hbi
from tomviz.scores.video_hbi import VideoHBIResult, frame_word_features, video_text_game

Progress = Callable[[float, str], None]  # progress(fraction done, message)


@dataclass
class ScoreSession:
    """One estimate, for re-rendering (CPU numpy only; deep-copyable)."""

    result: BanzhafResult | HBIResult
    image: Image.Image | None  # the photo at display size (image models)
    rollout: np.ndarray | None = None  # [rows, cols] CLS attention rollout through the merges (image models)


def groups_layer(layer: float, num_layers: int) -> int:
    """"Groups after layer k" (1-based ``layer``) → the 0-based layer, k clamped to ``1..num_layers - 1``
    (at least one layer must run after it for the coalitions)."""
    return int(min(max(int(round(layer)), 1), num_layers - 1)) - 1


def compute_banzhaf(model: str, image: Any, text: str | None, ratio: float, layer: float, samples: int,
                    exact: bool, seed: int, progress: Progress | None = None) -> ScoreSession:
    """Inspect the input (``image`` for image models, ``text`` for text models) and estimate the Banzhaf
    values of the groups after the 1-based ``layer``. ValueError when the model's input is missing."""
    loaded = tomviz.load(model.strip(), untrusted=True)
    image_model = loaded.modality == "image"
    if image_model:
        if image is None:
            raise ValueError("upload an image (or pick an example) for an image model")
        x: Any = image
    else:
        if not text or not str(text).strip():
            raise ValueError("type a prompt for a text model")
        x = str(text)
    res = tomviz.inspect(loaded, x, ratio=float(ratio), keep_hidden=True, full_attention=image_model)
    result = banzhaf(res, groups_layer(layer, loaded.num_layers), samples=int(samples), exact=bool(exact),
                     seed=int(seed), progress=progress)
    photo = display_image(res.inputs.image) if res.inputs.image is not None else None
    return ScoreSession(result=result, image=photo, rollout=rollout_grid(res.trace) if image_model else None)


def compute_hbi(model: str, image: Any, text: str, ratio: float, layer: float, samples: int, exact: bool,
                seed: int, progress: Progress | None = None) -> ScoreSession:
    """Image groups after the 1-based ``layer`` × the words of ``text``, one game on a CLIP model. Raises
    ``tomviz.ModelLoadError`` when the weights cannot be loaded (no hub access), ``ValueError`` for bad input."""
    loaded = tomviz.load(model.strip(), untrusted=True)
    if not loaded.clip_text:
        raise ValueError(f"{loaded.name} is not a CLIP model with image and text towers")
    if image is None:
        raise ValueError("upload an image (or pick an example)")
    res = tomviz.inspect(loaded, image, ratio=float(ratio), keep_hidden=True)
    result = hbi(res, text, groups_layer(layer, loaded.num_layers), samples=int(samples), exact=bool(exact),
                 seed=int(seed), progress=progress)
    return ScoreSession(result=result, image=display_image(res.inputs.image))


VIDEO_HBI_FRAMES = (2, 32)  # frames a clip's game may sample (HBI samples 12)
VIDEO_HBI_SAMPLES = (16, 8192)  # coalitions an estimate may draw


@dataclass
class VideoHBISession:
    """One frames × words game of a clip: the estimate, the sampled frames and its picture (CPU only)."""

    result: VideoHBIResult  # frame groups, word groups, interactions [F, G] with standard errors
    video: Video  # the sampled frames [T, H, W, 3]
    picture: Image.Image  # the frame strip by group, the words by group, the interaction heat map


def video_hbi(model: Any, clip: Any, text: str, level: int = 1, frames: int = 12, samples: int = 2048,
              exact: bool | None = None, seed: int = 0, limits: VideoLimits = VideoLimits(), untrusted: bool = False,
              tokenizer: Any = None, progress: Progress | None = None) -> VideoHBISession:
    """HBI on a clip with stock CLIP applied per frame (or X-CLIP over the clip): frame groups × word groups at ``level`` (0: frames × words;
    1, 2: DPC-KNN groups at HBI's ratios) as one Banzhaf game (:mod:`tomviz.scores.video_hbi`).

    model: a CLIP or X-CLIP name (``openai/clip-vit-base-patch32``, ``microsoft/xclip-base-patch32``: it plays its
    own ``num_frames``), a ``CLIPModel`` / ``XCLIPModel`` or a loaded one; clip: a video file,
    a folder or list of frames, or a :class:`~tomviz.inputs.video.Video`; ``frames`` sampled evenly, within
    ``VIDEO_HBI_FRAMES``; ``samples`` coalitions (``VIDEO_HBI_SAMPLES``) when not exact (exact=None: exact up to 12
    players). Raises ``tomviz.ModelLoadError`` when the weights cannot be loaded, ``ValueError`` for bad input.
    """
    if not VIDEO_HBI_FRAMES[0] <= int(frames) <= VIDEO_HBI_FRAMES[1]:
        raise ValueError(f"frames must be in {VIDEO_HBI_FRAMES[0]}..{VIDEO_HBI_FRAMES[1]}, got {frames}")
    if not VIDEO_HBI_SAMPLES[0] <= int(samples) <= VIDEO_HBI_SAMPLES[1]:
        raise ValueError(f"samples must be in {VIDEO_HBI_SAMPLES[0]}..{VIDEO_HBI_SAMPLES[1]}, got {samples}")
    loaded = load_video_text(model.strip() if isinstance(model, str) else model, untrusted=untrusted)
    count = loaded.num_frames if is_xclip(loaded) else int(frames)  # X-CLIP plays exactly its own count
    video = clip if isinstance(clip, Video) else read_video(clip, count, limits)
    if video.num_frames > VIDEO_HBI_FRAMES[1]:
        raise ValueError(f"the clip has {video.num_frames} frames; at most {VIDEO_HBI_FRAMES[1]} play")
    if is_xclip(loaded) and video.num_frames > count:
        video = resample(video, count)
    features = frame_word_features(loaded, video.frames, text, tokenizer)
    result = video_text_game(features, int(level), samples=int(samples), exact=exact, seed=int(seed), progress=progress)
    picture = video_hbi_picture(video.frames, result.frame_groups, result.words, result.word_groups, result.cross,
                                result.cross_stderr, result.frame_group_names(), result.word_group_names())
    return VideoHBISession(result=result, video=video, picture=picture)


def resample(video: Video, count: int) -> Video:
    """``count`` of ``video``'s frames, spread evenly (first and last kept)."""
    keep = sample_indices(video.num_frames, count)
    return Video(frames=video.frames[keep], timestamps=tuple(video.timestamps[k] for k in keep), fps=video.fps,
                 source_frames=video.source_frames, indices=tuple(video.indices[k] for k in keep))
