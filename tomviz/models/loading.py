"""Loading models: the embedded defaults, Hugging Face ids and local folders, or a model instance.

:class:`LoadedModel` bundles a transformers model with what turns a user's input
into its tensors (image spec or tokenizer). Models are cached per process on
first use (never at import), each behind its own lock; the cached model is shared
by all callers and never mutated per call. Which names may load what (hub policy,
the public server's trust boundary) is :mod:`tomviz.models.hub`.
"""
from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from tomviz.inputs.image import DINOV2_SPEC, ImageSpec, load_image, spec_from_processor_config, to_pixel_values
from tomviz.merge.engine import MergeConfig, MergeState
from tomviz.models import hub, weights
from tomviz.models.adapter import Adapter, adapter_for_type, find_adapter, supported_labels
from tomviz.models.hub import DEFAULT_MODEL, DEFAULT_MODELS, ModelLoadError, ModelSource, resolve_source  # noqa: F401 - re-exported
from tomviz.models.patching import apply, new_state
from tomviz.models.vlm import LoadedVLM, find_vlm_adapter, vlm_adapter_for_type
from tomviz.models.vlm import wrap as wrap_vlm


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class PreparedInput:
    """Model inputs (``pixel_values [1, 3, H, W]`` or ``input_ids``/``attention_mask [1, N]``) and their description."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    image: Any = None  # the RGB PIL image the model saw (before resizing), for pictures

    def method_extra(self) -> dict[str, Any]:
        """What merge methods may read about this input (``MergeConfig.extra``): word ids, patch grid."""
        return {k: self.meta[k] for k in ("word_ids", "patch_grid") if self.meta.get(k) is not None}


@dataclass
class LoadedModel:
    """A transformers model with its input preparation."""

    name: str
    model: nn.Module
    adapter: Adapter
    backbone: nn.Module
    image_spec: ImageSpec | None = None
    tokenizer: Any = None
    clip_text: bool = False  # a full CLIPModel (image + text towers)

    @property
    def modality(self) -> str:
        return self.adapter.modality

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_layers(self) -> int:
        return len(self.adapter.blocks(self.backbone))

    @property
    def labels(self) -> dict[int, str] | None:
        """Class names when the model has a classification head."""
        if hasattr(self.model, "classifier") or hasattr(self.model, "cls_classifier"):
            id2label = getattr(self.model.config, "id2label", None) or {}
            return {int(k): v for k, v in id2label.items()}
        return None

    @property
    def patch_size(self) -> int | None:
        return getattr(self.backbone.config, "patch_size", None)

    @property
    def max_length(self) -> int:
        """The longest text input in tokens: the family's position limit, capped by the tokenizer's."""
        if self.tokenizer is None:
            raise ValueError("not a text model")
        limit = self.adapter.max_positions(self.backbone)
        return int(min(limit, getattr(self.tokenizer, "model_max_length", limit) or limit))

    @property
    def widths(self) -> tuple[int, int]:
        """``(hidden C, MLP width M)`` of the blocks, for the FLOP count (``tomviz.speed``)."""
        return self.adapter.widths(self.backbone)

    def run(
        self, inputs: PreparedInput, config: MergeConfig, forward: Callable[..., Any] | None = None, **model_kwargs: Any,
    ) -> tuple[Any, MergeState]:
        """One forward pass under ``config``; returns (outputs, state).

        ``state.trace()`` is the trace (when ``config.trace``); ``state.sizes``/``state.valid``
        describe the output tokens; ``model_kwargs`` go to the model (e.g. CLIP's ``input_ids``).
        ``forward`` replaces the model's own call (e.g. ``get_image_features``); it gets
        ``**inputs.tensors, **model_kwargs``.
        """
        meta = {"model": self.name, **inputs.meta}
        with torch.inference_mode(), new_state(self.model, config, meta) as state:
            if forward is None:
                # a CLIPModel given only an image: run its image tower
                forward = self.backbone if self.clip_text and "input_ids" not in model_kwargs else self.model
            outputs = forward(**inputs.tensors, **model_kwargs)
        return outputs, state

    def prepare(self, x: Any) -> PreparedInput:
        """A PIL image / path / bytes / array, a string, or ready tensors → model inputs."""
        device = self.device
        if isinstance(x, torch.Tensor):
            key = "pixel_values" if self.modality == "image" else "input_ids"
            tensor = x if x.dim() > (3 if key == "pixel_values" else 1) else x.unsqueeze(0)
            meta = self._tensor_meta(tensor, key)
            return PreparedInput(tensors={key: tensor.to(device)}, meta=meta)
        if isinstance(x, dict):
            tensors = {k: v.to(device) for k, v in x.items()}
            key = "pixel_values" if "pixel_values" in tensors else "input_ids"
            return PreparedInput(tensors=tensors, meta=self._tensor_meta(tensors[key], key))
        if isinstance(x, str) and self.modality == "text":
            return self._prepare_text(x)
        if self.modality == "text":
            raise ValueError(f"{self.name} is a text model: give it a string, not {type(x).__name__}")
        return self._prepare_image(x)

    def _tensor_meta(self, tensor: torch.Tensor, key: str) -> dict[str, Any]:
        if key == "pixel_values":
            h, w = tensor.shape[-2:]
            p = self.patch_size
            return {"input": "tensor", "model_input_size": [int(w), int(h)], "patch_size": p, "patch_grid": [int(h) // p, int(w) // p]}
        meta: dict[str, Any] = {"input": "tensor"}
        if self.tokenizer is not None:
            meta["tokens"] = self.tokenizer.convert_ids_to_tokens(tensor[0].tolist())
        return meta

    def _prepare_image(self, x: Any) -> PreparedInput:
        image = load_image(x)
        spec = self.image_spec or ImageSpec(size=(224, 224))
        pixel_values = to_pixel_values(image, spec).to(self.device)
        h, w = pixel_values.shape[-2:]
        p = self.patch_size
        meta = {
            "input": "image",
            "image_size": [image.width, image.height],
            "model_input_size": [int(w), int(h)],
            "patch_size": p,
            "patch_grid": [int(h) // p, int(w) // p],
        }
        return PreparedInput(tensors={"pixel_values": pixel_values}, meta=meta, image=image)

    def _prepare_text(self, text: str) -> PreparedInput:
        if not text.strip():
            raise ValueError("the prompt is empty: type some text")
        limit = self.max_length
        full = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        enc = self.tokenizer(text, truncation=True, max_length=limit, return_tensors="pt")
        tokens = self.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
        meta = {
            "input": "text",
            "text": text,
            "tokens": tokens,
            "word_ids": [(-1 if w is None else int(w)) for w in enc.word_ids(0)] if hasattr(enc, "word_ids") else None,
            "truncated": len(full) > limit,
            "num_tokens_before_truncation": len(full),
            "max_length": limit,
        }
        tensors = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return PreparedInput(tensors=tensors, meta=meta)


_CACHE: "OrderedDict[tuple[str, str, str], LoadedModel]" = OrderedDict()  # (ref, device, kind) → model
_CACHE_LOCK = threading.Lock()  # held only to read or change _CACHE / _LOADING, never during a load
_LOADING: dict[tuple[str, str, str], threading.Lock] = {}  # one lock per model being loaded
# Besides the embedded defaults, keep this many other models (least recently used goes first):
# on a public Space anyone can type model ids, so memory must stay bounded.
MAX_OTHER_MODELS = int(os.environ.get("TOMVIZ_MAX_MODELS", "2"))


def load(
    name: str | nn.Module | LoadedModel = DEFAULT_MODEL["image"], device: str | torch.device | None = None, *, untrusted: bool = False,
    processor: Any = None,
) -> LoadedModel:
    """Load a model by name: ``"dinov2-small"``, ``"minilm"``, a Hugging Face id, a local folder,
    or wrap a transformers model instance. Named models are cached per process.

    ``untrusted=True`` for names that come from the web (every app endpoint): only embedded names,
    hub repo ids and folders the operator allows in ``$TOMVIZ_LOCAL_MODELS`` (see :mod:`tomviz.models.hub`).
    A model loading (or downloading) holds only its own lock: other models stay available meanwhile.
    A vision-language model instance (SmolVLM, LLaVA) needs its transformers ``processor`` and comes back
    as a :class:`tomviz.models.vlm.LoadedVLM`.
    """
    if isinstance(name, (LoadedModel, LoadedVLM)):
        return name
    device = torch.device(device) if device is not None else default_device()
    if isinstance(name, nn.Module) and find_vlm_adapter(name) is not None:
        try:
            return wrap_vlm(type(name).__name__, name.to(device).eval(), processor)
        except (TypeError, ValueError) as err:
            raise ModelLoadError(str(err)) from err
    if isinstance(name, nn.Module):
        return _wrap(type(name).__name__, name.to(device).eval())
    source = resolve_source(name, untrusted=untrusted)
    key = (source.ref, str(device), source.kind)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        model_lock = _LOADING.setdefault(key, threading.Lock())
    with model_lock:  # the first caller loads; the others wait for this model only, then find it cached
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
        try:
            loaded = _load_uncached(source, device)
        except BaseException:
            with _CACHE_LOCK:
                _LOADING.pop(key, None)
            raise
        with _CACHE_LOCK:  # cache it and retire its lock at once: no caller finds neither and loads it again
            _LOADING.pop(key, None)
            _CACHE[key] = loaded
            others = [k for k in _CACHE if k[2] != "embedded"]
            for old in others[: max(0, len(others) - MAX_OTHER_MODELS)]:
                del _CACHE[old]
        return loaded


def _wrap(name: str, model: nn.Module, image_spec: ImageSpec | None = None, tokenizer: Any = None) -> LoadedModel:
    try:
        adapter, backbone = find_adapter(model)
    except TypeError as err:
        raise ModelLoadError(f"{name}: {err}") from err
    if adapter.modality == "image" and image_spec is None:
        size = int(getattr(backbone.config, "image_size", 224))
        image_spec = ImageSpec(size=(size, size))
    apply(model)
    return LoadedModel(
        name=name, model=model, adapter=adapter, backbone=backbone, image_spec=image_spec, tokenizer=tokenizer,
        clip_text=hasattr(model, "text_model") and hasattr(model, "vision_model"),
    )


def _load_uncached(source: ModelSource, device: torch.device) -> LoadedModel:
    from transformers.utils import logging as tf_logging

    tf_logging.disable_progress_bar()  # "Loading weights" bars would fill the app's log on every load

    if source.ref == DEFAULT_MODEL["image"]:
        return _wrap(source.ref, weights.load_dinov2_small().to(device).eval(), image_spec=DINOV2_SPEC)
    if source.ref == DEFAULT_MODEL["text"]:
        model, tokenizer = weights.load_minilm()
        return _wrap(source.ref, model.to(device).eval(), tokenizer=tokenizer)
    folder = hub.fetch(source.ref, device.type) if source.kind == "hub" else Path(source.ref)
    return _load_folder(source.ref, folder, device)


def _load_folder(name: str, folder: Path, device: torch.device) -> LoadedModel:
    """A transformers model folder of a supported architecture (never ``trust_remote_code``); ``name`` is
    what messages and traces call it (the repo id for hub snapshots)."""
    import transformers as tf

    try:
        config = tf.AutoConfig.from_pretrained(folder)
    except Exception as err:  # noqa: BLE001 - many types; all mean "cannot load"
        raise ModelLoadError(f"cannot load model {name!r}: {hub.first_line(err)}") from err
    model_type = getattr(config, "model_type", "")
    if vlm_adapter_for_type(model_type) is not None:
        return _load_vlm(name, folder, device)
    adapter = adapter_for_type(model_type)
    if adapter is None:
        raise ModelLoadError(
            f"model {name!r} is a {model_type or 'unknown'} model; tomviz supports {supported_labels()} encoders"
        )
    try:
        model, tokenizer = adapter.load(folder, config)
        spec = _image_spec(folder) if adapter.modality == "image" else None
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot load model {name!r}: {err}") from err
    return _wrap(name, model.to(device).eval(), image_spec=spec, tokenizer=tokenizer)


def _load_vlm(name: str, folder: Path, device: torch.device) -> LoadedVLM:
    """A SmolVLM / Idefics3 / LLaVA folder and its processor (fp16 on CUDA; never ``trust_remote_code``)."""
    import transformers as tf

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        model = tf.AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="sdpa", dtype=dtype)
        processor = load_processor(folder)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot load model {name!r}: {hub.first_line(err)}") from err
    return wrap_vlm(name, model.to(device).eval(), processor)


def load_processor(folder: Path) -> Any:
    """The transformers processor of a VLM folder. SmolVLM's and LLaVA-OneVision's need torchvision (for
    videos); without it, an image-only processor is built from the same files."""
    import transformers as tf

    try:
        return tf.AutoProcessor.from_pretrained(folder)
    except Exception:  # noqa: BLE001 - retried below where the family builds one from the files; else raised again
        config = tf.AutoConfig.from_pretrained(folder)
        adapter = vlm_adapter_for_type(config.model_type)
        processor = None if adapter is None else adapter.processor_from_files(Path(folder), config)
        if processor is None:
            raise
    return processor


def _image_spec(folder: Path) -> ImageSpec | None:
    path = folder / "preprocessor_config.json"
    if not path.exists():
        return None  # no processor config: fall back to the model's image size
    return spec_from_processor_config(json.loads(path.read_text()))
