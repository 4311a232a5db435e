"""X-CLIP (Ni et al., ECCV 2022; transformers ``XCLIPModel``) for frames × words: loading, and one embedding per
frame and per text token in X-CLIP's joint space.

X-CLIP is no token-merging backbone (its vision layers pass cross-frame message tokens), so it has no adapter;
:func:`load_video_text` loads it beside the CLIP models that :func:`tomviz.models.loading.load` handles, with the
same hub policy (:mod:`tomviz.models.hub`: safetensors only, the parameter cap, the web's trust boundary). Its
video processor needs torchvision, so frames go through the checkpoint's ``preprocessor_config.json`` with PIL
(:func:`tomviz.models.frames.frame_pixels`). A checkpoint plays exactly ``vision_config.num_frames`` frames (8
for ``microsoft/xclip-base-patch32``): its message tokens and its multi-frame integration transformer (MIT) are
built for that count.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tomviz.inputs.image import ImageSpec, spec_from_processor_config
from tomviz.models import hub
from tomviz.models.hub import ModelLoadError
from tomviz.models.loading import LoadedModel, default_device, load

_CACHE: dict[tuple[str, str], LoadedXCLIP] = {}  # at most MAX_XCLIP_MODELS, under _LOCK
_LOCK = threading.Lock()  # held while one X-CLIP loads: a second caller waits and finds it cached
MAX_XCLIP_MODELS = 1


@dataclass
class LoadedXCLIP:
    """An ``XCLIPModel`` with its tokenizer and image preprocessing (shared by all callers, never mutated)."""

    name: str
    model: nn.Module
    tokenizer: Any
    image_spec: ImageSpec

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_frames(self) -> int:
        return int(self.model.config.vision_config.num_frames)


def is_xclip(model: Any) -> bool:
    return type(model).__name__ == "XCLIPModel" or isinstance(model, LoadedXCLIP)


def load_video_text(model: Any, untrusted: bool = False) -> LoadedModel | LoadedXCLIP:
    """A model with image (or video) and text towers: an X-CLIP name or instance → :class:`LoadedXCLIP`; anything
    else goes to :func:`tomviz.models.loading.load` (CLIP names and instances)."""
    if isinstance(model, (LoadedModel, LoadedXCLIP)):
        return model
    if is_xclip(model):
        size = int(model.config.vision_config.image_size)
        return LoadedXCLIP(type(model).__name__, model.eval(), None, ImageSpec(size=(size, size)))
    if isinstance(model, str):
        source = hub.resolve_source(model, untrusted=untrusted)
        if source.kind != "embedded":
            folder = hub.fetch(source.ref) if source.kind == "hub" else Path(source.ref)
            if _model_type(folder) == "xclip":
                return _load_xclip(source.ref, folder)
    return load(model, untrusted=untrusted)


def _model_type(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError):
        return ""


def _load_xclip(name: str, folder: Path) -> LoadedXCLIP:
    import transformers as tf

    device = default_device()
    key = (name, str(device))
    with _LOCK:
        if key not in _CACHE:
            try:
                model = tf.XCLIPModel.from_pretrained(folder, use_safetensors=True).to(device).eval()
                tokenizer = tf.AutoTokenizer.from_pretrained(folder)
                spec = spec_from_processor_config(json.loads((folder / "preprocessor_config.json").read_text()))
            except Exception as err:  # noqa: BLE001 - many types; all mean "cannot load"
                raise ModelLoadError(f"cannot load model {name!r}: {hub.first_line(err)}") from err
            while len(_CACHE) >= MAX_XCLIP_MODELS:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = LoadedXCLIP(name, model, tokenizer, spec)
        return _CACHE[key]


def xclip_embeddings(loaded: LoadedXCLIP, pixels: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([T, D] frames, [L, D] text tokens)``: each frame's projected CLS after the MIT (X-CLIP's video embedding
    is their mean), each token's projected final state. ``pixels`` ``[T, 3, h, w]`` with T = ``num_frames``;
    ``input_ids``/``attention_mask`` ``[1, L]``. X-CLIP's video-conditioned prompt (added to the pooled text
    embedding only) is not applied to tokens."""
    if pixels.shape[0] != loaded.num_frames:
        raise ValueError(f"{loaded.name} plays exactly {loaded.num_frames} frames, got {pixels.shape[0]}")
    model, device = loaded.model, loaded.device
    with torch.inference_mode():
        cls = model.visual_projection(model.vision_model(pixel_values=pixels.to(device)).pooler_output)  # [T, D]
        frames = model.mit(cls[None]).last_hidden_state[0]  # [T, D]
        hidden = model.text_model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).last_hidden_state
        tokens = model.text_projection(hidden)[0]  # [L, D]
    return frames.float().cpu(), tokens.float().cpu()
