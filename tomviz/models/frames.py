"""A clip's frames through an image encoder, one frame at a time: what the temporal methods read.

The embedded DINOv2-S/14 (or any loaded image model with a CLS token) encodes every sampled frame as an
image (resized to the model's input size, its own normalisation). Per frame it gives:

* ``tokens``: the patch tokens of block ``feature_layer`` (0-based, the block's output before the final
  layer norm; default the middle block, :func:`middle_block`) — the features the temporal methods compare
  across frames;
* ``attention``: the last block's CLS → patch attention (mean over heads), where SigLIP's pooling head's
  attention is read by FastVID and HoliTom's importance by the originals;
* ``frame_features``: the final CLS token, standing in for SigLIP's pooled frame feature (FastVID's DySeg);
* ``final``: the final (layer-normed) patch tokens, for the pooled embedding of the fidelity;
* ``pixels``: the normalised model input, for RLT's pixel differences.

Why a middle layer: on ``world.mp4`` (a globe turning on black) DINOv2-S's last block makes the same
position in adjacent frames cosine ≈ 0.99 for the moving continents as for the black background, so no
threshold separates them; block 6 keeps them apart (moving globe tokens: median ≈ 0.9, 10th percentile
≈ 0.7; black background ≈ 1), so HoliTom's τ = 0.8 means what it means on SigLIP's features.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from tomviz.inputs.image import ImageSpec, to_pixel_values
from tomviz.merge.base import MergeMethod
from tomviz.merge.engine import MergeConfig
from tomviz.merge.request import MergeRequest
from tomviz.models.loading import LoadedModel, PreparedInput
from tomviz.trace import Trace


def middle_block(num_layers: int) -> int:
    """The default feature block: the middle one, ``num_layers // 2`` (block 6 of DINOv2-S's 12; see above)."""
    return num_layers // 2


@dataclass(frozen=True)
class FrameFeatures:
    """Per-frame encoder outputs of one clip (T frames, N = rows * cols patches, C channels)."""

    tokens: torch.Tensor  # [T, N, C] block ``feature_layer``'s patch tokens
    attention: torch.Tensor  # [T, N] last block's CLS → patch attention, mean over heads
    frame_features: torch.Tensor  # [T, C] final CLS token
    final: torch.Tensor  # [T, N, C] final layer-normed patch tokens
    pixels: torch.Tensor  # [T, 3, H, W] the normalised model input
    patch_grid: tuple[int, int]  # (rows, cols)
    patch_size: int
    feature_layer: int
    encoder_seconds: float  # wall time of the T forwards


def frame_pixels(frames: np.ndarray, spec: ImageSpec) -> torch.Tensor:
    """``[T, H, W, 3]`` uint8 → ``[T, 3, h, w]`` model input (resized to ``spec.size``, normalised)."""
    return torch.cat([to_pixel_values(Image.fromarray(frame), spec) for frame in frames])


def encode_frames(loaded: LoadedModel, frames: np.ndarray, feature_layer: int | None = None) -> FrameFeatures:
    """Run ``loaded`` (an image model with one CLS token first) on every frame of ``frames`` ``[T, H, W, 3]``."""
    import time

    if loaded.modality != "image":
        raise ValueError(f"{loaded.name} is not an image model: a clip's frames need one (e.g. dinov2-small)")
    feature_layer = middle_block(loaded.num_layers) if feature_layer is None else int(feature_layer)
    if not 0 <= feature_layer < loaded.num_layers:
        raise ValueError(f"feature_layer must be in 0..{loaded.num_layers - 1}, got {feature_layer}")
    spec = loaded.image_spec or ImageSpec(size=(224, 224))
    pixels = frame_pixels(frames, spec)
    patch = int(loaded.patch_size)
    grid = (pixels.shape[2] // patch, pixels.shape[3] // patch)
    per_frame = grid[0] * grid[1]
    config = MergeConfig.unmerged(trace=True, keep_hidden=True)
    tokens, attention, cls, final = [], [], [], []
    start = time.perf_counter()
    for index in range(pixels.shape[0]):
        inputs = PreparedInput(tensors={"pixel_values": pixels[index : index + 1].to(loaded.device)})
        outputs, state = loaded.run(inputs, config)
        first = outputs.last_hidden_state.shape[1] - per_frame  # CLS (and registers) come first
        tokens.append(state.hidden[feature_layer][0][0, first:].float().cpu())  # [N, C]
        attention.append(torch.from_numpy(state.trace().layers[-1].cls_attention[first:]))  # [N]
        cls.append(outputs.last_hidden_state[0, 0].float().cpu())  # [C]
        final.append(outputs.last_hidden_state[0, first:].float().cpu())  # [N, C]
    seconds = time.perf_counter() - start
    return FrameFeatures(torch.stack(tokens), torch.stack(attention), torch.stack(cls), torch.stack(final),
                         pixels, grid, patch, feature_layer, seconds)


@dataclass(frozen=True)
class MergedClip:
    """One forward of a whole clip with a method that joins its frames inside the encoder (TempMe)."""

    trace: Trace  # the engine's: one record per block; input tokens = every frame's tokens (CLS first), frame-major
    final: torch.Tensor  # [M, C] final layer-normed tokens of the clip, its sequences one after the other
    tokens_per_frame: int  # tokens a frame enters with, protected ones included
    num_protected: int  # protected tokens a frame enters with (CLS, registers)
    seconds: float  # wall time of the forward


def encode_clip_merged(loaded: LoadedModel, frames: np.ndarray, method: MergeMethod) -> MergedClip:
    """Run ``loaded`` once on all of ``frames`` ``[T, H, W, 3]`` as a batch under ``method``, which reads the
    batch as the clip's frames in order (:meth:`~tomviz.merge.base.MergeMethod.layer_steps`)."""
    import time

    if loaded.modality != "image":
        raise ValueError(f"{loaded.name} is not an image model: a clip's frames need one (e.g. dinov2-small)")
    pixels = frame_pixels(frames, loaded.image_spec or ImageSpec(size=(224, 224)))
    config = MergeRequest(method=method, modality="video").config(trace=True)
    start = time.perf_counter()
    outputs, state = loaded.run(PreparedInput(tensors={"pixel_values": pixels.to(loaded.device)}), config)
    seconds = time.perf_counter() - start
    final = outputs.last_hidden_state.float().cpu()  # [B', M', C]
    trace = state.trace()
    per_frame = trace.meta["num_input_tokens"]
    protected = per_frame - (pixels.shape[2] // loaded.patch_size) * (pixels.shape[3] // loaded.patch_size)
    return MergedClip(trace, final.reshape(-1, final.shape[-1]), per_frame, protected, seconds)
