"""RLT, run-length tokenization: drop the patches whose pixels repeat the previous tubelet's.

Choudhury et al., "Don't Look Twice: Faster Video Transformers with Run-Length Tokenization" (NeurIPS 2024).
Reproduces rccchoudhury/rlt @69ec8b4 ``src/models/static_token_utils.py``, ``batched_find_idxs_to_keep``,
with the threshold of its configs (``drop_param: 0.1``, ``configs/experiment/val_vith_mae.yaml``) on
ImageNet-normalised pixels. The rule, for tubelets of ``tubelet`` frames and ``patch`` x ``patch`` patches:

1. for tubelet k >= 1: the absolute difference between its last frame and the first frame of tubelet k-1,
   averaged over the patch's pixels and then over the colour channels;
2. the first tubelet always stays (the original pads it with 255);
3. a token stays when that mean exceeds ``threshold``; the others are dropped before the encoder.

The original drops the repeated tokens and (with ``encode_length``) tells the model how long each kept
token's run is. The partition here says the same: a dropped token joins the latest kept token at its
position (its run); the kept token's value is its own, nothing is averaged. Deliberate differences: any
tubelet (1 for per-frame encoders such as DINOv2, whose patch is 14), any patch size; the tokens are
given by the caller (an encoder's tokens per tubelet), the rule reads only the pixels; one tubelet alone
stays whole (the original fails on it). Checked beside the original function (run outside this
repository) on 100 seeded clips (tubelets 1 and 2, patches 8, 14, 16): identical masks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tomviz.merge.temporal.base import TemporalReduction, check_tokens

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(frames: torch.Tensor) -> torch.Tensor:
    """``[T, H, W, 3]`` uint8 RGB → ``[T, 3, H, W]`` float, ImageNet mean/std on the [0, 1] scale."""
    pixels = frames.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=pixels.device)[:, None, None]
    return (pixels - mean) / std


def static_token_mask(pixels: torch.Tensor, patch: int, tubelet: int = 1, threshold: float = 0.1) -> torch.Tensor:
    """``[T / tubelet, H / patch, W / patch]`` bool, True for the tokens RLT keeps. pixels: ``[T, 3, H, W]``."""
    frames = pixels.shape[0]
    if frames % tubelet or pixels.shape[2] % patch or pixels.shape[3] % patch:
        raise ValueError(f"pixels {tuple(pixels.shape)} do not tile into tubelets of {tubelet} and patches of {patch}")
    pixels = pixels.float()
    change = (pixels[2 * tubelet - 1 :: tubelet] - pixels[: -tubelet : tubelet]).abs()  # [T/t - 1, 3, H, W]
    change = F.avg_pool2d(change, patch).mean(dim=1)  # [T/t - 1, H/p, W/p]
    first = torch.full_like(change[:1] if change.shape[0] else pixels[:1, 0, ::patch, ::patch], torch.inf)
    return torch.cat([first, change]) > threshold


def rlt(tokens: torch.Tensor, pixels: torch.Tensor, patch: int, tubelet: int = 1, threshold: float = 0.1) -> TemporalReduction:
    """RLT on a clip. tokens: ``[T / tubelet, N, C]``, N = (H / patch) * (W / patch); pixels ``[T, 3, H, W]``
    ImageNet-normalised (:func:`imagenet_normalize`)."""
    num_steps, per_step, _ = check_tokens(tokens)
    keep = static_token_mask(pixels, patch, tubelet, threshold).reshape(num_steps, -1)  # [T', N]
    if keep.shape[1] != per_step:
        raise ValueError(f"the pixels give {keep.shape[1]} patches per tubelet, the tokens {per_step}")
    step = torch.arange(num_steps, device=tokens.device)[:, None].expand(-1, per_step)
    run_start = torch.where(keep, step, -1).cummax(dim=0).values  # [T', N] tubelet where each run starts
    start_index = run_start * per_step + torch.arange(per_step, device=tokens.device)  # frame-major index
    flat_keep = keep.flatten()
    slot = flat_keep.long().cumsum(0) - 1
    position = flat_keep.nonzero().flatten()
    return TemporalReduction(tokens.flatten(0, 1)[position], slot[start_index.flatten()], position, num_steps, per_step)
