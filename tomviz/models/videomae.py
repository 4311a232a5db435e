"""VideoMAE (transformers ``VideoMAEModel`` / ``VideoMAEForVideoClassification``): ToMe over space-time tokens.

As in ToMe's video results (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023, §5 "video"; the
facebookresearch/ToMe repository ships no video code), the encoder's tubelet tokens — ``T / tubelet_size``
time steps of ``rows * cols`` patches, 1568 for 16 frames of 224² in 16² patches and tubelets of 2 — are
merged jointly across space and time, ``r`` per block, between the attention and the MLP. VideoMAE has no CLS
token (its classifier mean-pools), so nothing is protected; the classifier's mean becomes the size-weighted
mean (:func:`size_weighted_mean_pooling`), as DINOv2's head does, so it equals the unmerged mean at ``r = 0``.

Input: a clip (a file, a folder or list of frames, a ``[T, H, W, 3]`` uint8 array) sampled to the model's
``num_frames`` and preprocessed here, since transformers' video processors need torchvision: each frame's
shorter side resized to the crop size, centre-cropped, scaled to [0, 1] and normalised, with the values of the
folder's ``preprocessor_config.json`` (``VideoMAEImageProcessor``'s: 224, bilinear, ImageNet's mean and std —
:data:`VIDEOMAE_SPEC`, also used for a model instance, at its ``image_size``). The trace's
``meta["frame_grid"]`` is ``(T / tubelet_size, rows, cols)``: tokens are time-step-major.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import VideoMAEForVideoClassification, VideoMAEModel

from tomviz.inputs.image import IMAGENET_MEAN, IMAGENET_STD, ImageSpec
from tomviz.inputs.video import Video, read_video
from tomviz.merge.engine import MergeState, current_state
from tomviz.models.adapter import Adapter, register, text_embeddings
from tomviz.models.blocks import Projections, merge
from tomviz.models.loading import PreparedInput


def _find(model: nn.Module) -> nn.Module | None:
    for candidate in (model, getattr(model, "videomae", None)):
        if isinstance(candidate, VideoMAEModel):
            return candidate
    return None


def _load(folder: Any, config: Any) -> tuple[nn.Module, None]:
    """A VideoMAE folder: its video classifier when it has one, else the encoder (SDPA attention)."""
    import transformers as tf

    archs = " ".join(getattr(config, "architectures", None) or [])
    auto = tf.AutoModelForVideoClassification if "VideoClassification" in archs else tf.AutoModel
    return auto.from_pretrained(folder, attn_implementation="sdpa"), None


def videomae_block(
    block: nn.Module, state: MergeState, index: int, num_heads: int, hidden: torch.Tensor, mask: Any = None, **kwargs: Any,
) -> torch.Tensor:
    """A ``VideoMAELayer`` with the merge between the attention and the MLP.

    Adapted from transformers 5.24 ``VideoMAELayer.forward`` and ``VideoMAESelfAttention.forward``
    (``models/videomae/modeling_videomae.py``). Changes: ``VideoMAESelfAttention`` takes no mask, so its
    attention is computed here with SDPA from the module's own ``query``/``key``/``value`` projections, given
    the merge state's mask (proportional attention: ``log(size)``; ``None`` until something merged, which is
    then exactly the model's own call); the keys and queries go to ``state.after_attention``; dropout
    omitted (inference only). hidden: ``[B, N, C]`` → ``[B, N - r, C]``.
    """
    self_attention = block.attention.attention
    bias = state.attention_mask(None, hidden)  # None or [B, 1, 1, N]
    normed = block.layernorm_before(hidden)
    batch, tokens, _ = normed.shape
    query, keys, values = self_attention.query(normed), self_attention.key(normed), self_attention.value(normed)  # [B, N, H*d]
    query_h, keys_h, values_h = (t.view(batch, tokens, num_heads, -1).transpose(1, 2) for t in (query, keys, values))
    context = F.scaled_dot_product_attention(query_h, keys_h, values_h, attn_mask=bias,
                                             scale=self_attention.scaling)  # [B, H, N, d]
    attended = block.attention.output(context.transpose(1, 2).reshape(batch, tokens, -1), normed)  # [B, N, C]
    hidden = merge(state, index, num_heads, hidden + attended, Projections(keys=keys, query=query))
    return block.output(block.intermediate(block.layernorm_after(hidden)), hidden)  # the MLP adds its residual


def size_weighted_mean_pooling(model: nn.Module, backbone: nn.Module) -> list[Any]:
    """Hooks so ``VideoMAEForVideoClassification`` mean-pools merged tokens by size.

    transformers 5.24 computes ``classifier(fc_norm(seq.mean(1)))`` with ``seq`` the encoder's output
    ``[B, N, C]`` (with mean pooling the backbone has no final norm). A merged token stands for ``size``
    tubelets, so the mean over the unmerged tokens is ``Σ size·x / Σ size``. One hook keeps ``seq``, the other
    swaps ``fc_norm``'s input ``[B, C]``; with nothing merged (or no merge state) they do nothing.
    """
    if not isinstance(model, VideoMAEForVideoClassification) or model.fc_norm is None:
        return []

    def keep_tokens(module: nn.Module, args: Any, output: Any) -> None:
        state = current_state()
        if state is not None:
            state.record_output(output.last_hidden_state)  # [B, N_L, C]

    def weighted_mean(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor] | None:
        state = current_state()
        if state is None or state.sizes is None or state.final_tokens is None:
            return None
        tokens = state.final_tokens
        sizes = state.token_weights(tokens)  # [B, N_L, 1]
        return ((tokens * sizes).sum(1) / sizes.sum(1),)  # [B, C]

    return [backbone.encoder.register_forward_hook(keep_tokens), model.fc_norm.register_forward_pre_hook(weighted_mean)]


VIDEOMAE_SPEC = ImageSpec(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, resample=Image.Resampling.BILINEAR)
"""``VideoMAEImageProcessor``'s defaults (``MCG-NJU/videomae-base``): shorter side 224, centre crop 224², bilinear."""


def clip_pixels(frames: np.ndarray, spec: ImageSpec = VIDEOMAE_SPEC) -> torch.Tensor:
    """``[T, H, W, 3]`` uint8 → ``[1, T, 3, s, s]`` (``s = spec.size[0]``): shorter side to ``s`` (``spec.resample``),
    centre crop ``s x s``, ``(x / 255 - mean) / std`` — ``VideoMAEImageProcessor``'s steps (its shortest edge and
    crop size are equal in the published configs)."""
    size, mean, std = spec.size[0], np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    out = []
    for frame in frames:
        image = Image.fromarray(np.asarray(frame, dtype=np.uint8)).convert("RGB")
        scale = size / min(image.width, image.height)
        w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((w, h), spec.resample)
        left, top = (w - size) // 2, (h - size) // 2
        arr = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0  # [s, s, 3]
        out.append((arr - mean) / std)
    return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).copy())[None]  # [1, T, 3, s, s]


def sample_index(total: int, count: int) -> np.ndarray:
    """``[count]`` indices spread uniformly over ``0 .. total - 1`` (repeating indices when ``total < count``)."""
    return np.linspace(0, total - 1, count).round().astype(int)


def sample_to(frames: np.ndarray, count: int) -> np.ndarray:
    """``count`` frames spread uniformly over ``frames`` ``[T, H, W, 3]`` (repeating frames of a short clip)."""
    return frames[sample_index(frames.shape[0], count)]


def prepare_clip(loaded: Any, x: Any) -> PreparedInput:
    """A clip (see :func:`tomviz.video.is_video_input`) or ready ``pixel_values [B, T, 3, H, W]`` → model inputs
    with ``meta["frame_grid"] = (T / tubelet_size, rows, cols)``."""
    config = loaded.backbone.config
    if isinstance(x, torch.Tensor):
        pixels = x if x.dim() == 5 else x.unsqueeze(0)
        frames = None
    else:
        video = x if isinstance(x, Video) else read_video(list(x) if isinstance(x, np.ndarray) else x, config.num_frames)
        frames = sample_to(video.frames, config.num_frames)
        size = int(config.image_size)  # a folder's preprocessor_config.json gives the spec; else the defaults at this size
        pixels = clip_pixels(frames, loaded.image_spec or ImageSpec((size, size), resample=Image.Resampling.BILINEAR))
    time_steps, (h, w), p = pixels.shape[1] // config.tubelet_size, pixels.shape[-2:], config.patch_size
    meta = {"input": "video" if frames is not None else "tensor", "frame_grid": [time_steps, h // p, w // p],
            "patch_size": p, "tubelet_size": int(config.tubelet_size), "model_input_size": [int(w), int(h)]}
    return PreparedInput(tensors={"pixel_values": pixels.to(loaded.device)}, meta=meta)


VIDEOMAE = register(
    Adapter(
        family="videomae",
        modality="video",
        label="VideoMAE",
        model_types=frozenset({"videomae"}),
        find_backbone=_find,
        blocks=lambda backbone: list(backbone.encoder.layer),
        num_protected=lambda backbone: 0,
        key_proj=lambda block: block.attention.attention.key,
        query_proj=lambda block: block.attention.attention.query,
        block_forward=videomae_block,
        head_hooks=size_weighted_mean_pooling,
        embedding=text_embeddings,  # logits, else the size-weighted mean of the final tokens
        prepare=prepare_clip,
        load=_load,
    )
)
