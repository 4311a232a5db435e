"""A clip and a question → a video VLM's tensors, preprocessed here (transformers' video processors need
torchvision, which tomviz does not require).

* LLaVA-OneVision: every frame resized to the tower's ``S x S`` (bicubic, as its video processor does), scaled
  to [0, 1] and normalised with the image processor's mean and std → ``pixel_values_videos [1, T, 3, S, S]``;
  the prompt's ``<video>`` placeholder becomes ``T * n + 1`` video tokens (``n = ceil(P / 2)²`` per frame after
  the 2x2 pooling, then one newline), as ``LlavaOnevisionProcessor.replace_video_token`` counts them;
* SmolVLM2: the frames are images (its video template: a line per frame, ``Frame from mm:ss: <image>``), one
  tile each (no splitting) → ``pixel_values [1, T, 3, S, S]``, ``n = (P / scale)²`` image tokens per frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from tomviz.inputs.video import Video, VideoLimits, read_video
from tomviz.models.vlm import LoadedVLM, VideoLayout

DEFAULT_VLM_FRAMES = 8


@dataclass
class VideoVLMInput:
    """A clip's tensors for one question, and where its tokens sit."""

    tensors: dict[str, torch.Tensor]  # input_ids [1, L], attention_mask [1, L], pixels [1, T, 3, S, S]
    pixels: torch.Tensor  # [1, T, 3, S, S] the frames as the tower takes them
    prompt: str
    question: str
    video: Video
    token_id: int  # the placeholder token of the frames' tokens in input_ids
    patch_grid: tuple[int, int]  # a frame's patches in the tower
    token_grid: tuple[int, int]  # a frame's tokens for the LLM


def video_layout(loaded: LoadedVLM) -> VideoLayout:
    """The family's :class:`VideoLayout`; ValueError for a family that takes no clips."""
    if loaded.adapter.video is None:
        raise ValueError(f"{loaded.name} ({loaded.adapter.family}) takes no clips here: use LLaVA-OneVision or SmolVLM2")
    return loaded.adapter.video


def frame_pixels(frames: np.ndarray, size: int, mean: Any, std: Any) -> torch.Tensor:
    """``[T, H, W, 3]`` uint8 → ``[1, T, 3, size, size]`` float: bicubic resize, /255, (x - mean) / std."""
    resized = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in frames])
    x = torch.from_numpy(resized).float().div(255).permute(0, 3, 1, 2)  # [T, 3, S, S]
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x[None]


def _prompt(loaded: LoadedVLM, question: str, content: list[dict[str, str]], fallback: str) -> str:
    template = getattr(loaded.processor, "chat_template", None) or getattr(loaded.tokenizer, "chat_template", None)
    if not template:
        return f"User: {fallback} {question}\nAssistant:"
    messages = [{"role": "user", "content": content + [{"type": "text", "text": question}]}]
    return loaded.processor.apply_chat_template(messages, add_generation_prompt=True)


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


def prepare_video(loaded: LoadedVLM, clip: Any, question: str, num_frames: int = DEFAULT_VLM_FRAMES,
                  limits: VideoLimits = VideoLimits()) -> VideoVLMInput:
    """A clip (a :class:`Video`, a path, a folder or list of frames; bounds checked before decoding) and a question
    → the model's tensors (module docstring)."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty: type a question about the clip")
    layout = video_layout(loaded)
    video = clip if isinstance(clip, Video) else read_video(clip, num_frames, limits)
    model, processor = loaded.model, loaded.processor
    vision = model.config.vision_config
    patch_grid = (vision.image_size // vision.patch_size,) * 2
    token_grid = tuple(layout.token_grid(model, patch_grid))
    frames = video.num_frames
    if layout.token == "video":
        placeholder = getattr(processor, "video_token", "<video>")
        prompt = _prompt(loaded, question, [{"type": "video"}], placeholder)
        count = frames * token_grid[0] * token_grid[1] + int(layout.trailing_marker)
        prompt = prompt.replace(placeholder, placeholder * count)  # as replace_video_token expands it
        image_processor = processor.image_processor
        pixels = frame_pixels(video.frames, vision.image_size, image_processor.image_mean, image_processor.image_std)
        tensors = dict(processor.tokenizer([prompt], return_tensors="pt"))
        tensors["pixel_values_videos"] = pixels
        token_id = int(model.config.video_token_id)
    else:
        placeholder = getattr(processor, "image_token", "<image>")
        lines = [{"type": "text", "text": f"You are provided the following series of {frames} frames."}]
        for t in video.timestamps:
            lines += [{"type": "text", "text": f"\nFrame from {_clock(t)}:"}, {"type": "image"}]
        prompt = _prompt(loaded, question, lines, " ".join([placeholder] * frames))
        images = [Image.fromarray(f) for f in video.frames]
        try:
            tensors = dict(processor(text=[prompt], images=[images], return_tensors="pt", do_image_splitting=False))
        except Exception as err:  # noqa: BLE001 - processors raise many types for frames they refuse
            raise ValueError(f"the processor of {loaded.name} refused the frames: {err}") from err
        pixels = tensors["pixel_values"]
        token_id = loaded.image_token_id
    length = int(tensors["input_ids"].shape[1])
    if length > loaded.max_length:
        raise ValueError(f"the prompt is {length} tokens with {frames} frames; {loaded.name} takes at most "
                         f"{loaded.max_length}: sample fewer frames")
    device, dtype = loaded.device, model.dtype
    tensors = {k: v.to(device) for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    pixels = pixels.to(device, dtype)
    return VideoVLMInput(tensors=tensors, pixels=pixels, prompt=prompt, question=question, video=video,
                         token_id=token_id, patch_grid=patch_grid, token_grid=token_grid)
