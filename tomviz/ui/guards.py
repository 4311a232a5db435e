"""Guards on what a visitor sends and on how long a request may run.

:class:`ImageFile` replaces ``gr.Image`` as an input on every tab. Gradio's own ``gr.Image.preprocess``
opens the file with PIL and, whenever the mode differs from the component's ``image_mode`` (``"RGB"`` by
default) or ``type`` is ``"pil"``, decodes the whole image; an image sent inline as a ``data:`` URL is
decoded in full with no size bound at all. ``ImageFile`` instead

* takes the image as a file path only (the loaders decode it later, once);
* checks a file's size on disk, or a ``data:`` URL's length before its base64 is decoded;
* reads the header (:mod:`tomviz.inputs.limits`: bytes, pixels, frames) and refuses with a message
  that never names a server path (no ``Could not preprocess … /tmp/gradio/…`` dump).

:func:`escape_markdown` makes a visitor's text literal where it is echoed into Markdown.

:class:`Watchdog` stops a heavy handler that ran past its budget in seconds or whose visitor left
(:func:`tomviz.ui.server.budgeted` puts the heavy events under it).
"""
from __future__ import annotations

import base64
import binascii
import ctypes
import functools
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from tomviz.inputs.limits import MAX_IMAGE_BYTES, ImageInputError, check_image_bytes, check_image_file

READ_TITLE = "Cannot read the image"
DATA_URL_PREFIX = "data:"
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


def decode_data_url(url: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of a base64 ``data:`` URL, refused from its length before decoding when it would exceed
    ``max_bytes``; ImageInputError for a malformed URL."""
    head, sep, body = url.partition(",")
    if not sep or not head.startswith(DATA_URL_PREFIX) or not head.endswith(";base64"):
        raise ImageInputError("An inline image must be a base64 data: URL.")
    if len(body) > (max_bytes // 3 + 1) * 4:  # base64: 4 characters per 3 bytes
        raise ImageInputError(f"The inline image has about {len(body) * 3 // 4 / 2**20:.1f} MiB; at most "
                              f"{max_bytes / 2**20:.0f} MiB are accepted.")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError("The inline image is not valid base64.") from None


def save_inline_image(url: str, cache_dir: str | Path, max_bytes: int = MAX_IMAGE_BYTES) -> str:
    """Check a ``data:`` URL image (length, then header) and write it under ``cache_dir``; its path."""
    data = decode_data_url(url, max_bytes)
    header = check_image_bytes(data, max_bytes)
    folder = Path(cache_dir) / hashlib.sha256(data).hexdigest()[:32]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"inline{SUFFIX.get(header.format, '.img')}"
    if not path.exists():
        path.write_bytes(data)
    return str(path)


class ImageFile(gr.Image):
    """``gr.Image``'s front end (``is_template``) as a bounded file input: the handler receives the path of a
    file whose size and header passed :mod:`tomviz.inputs.limits` (``type`` is always ``"filepath"``)."""

    is_template = True

    @functools.wraps(gr.Image.__init__)  # gr.Image's signature: Gradio builds the page's props from it
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.type, self.image_mode = "filepath", None  # never decode here; the loaders convert to RGB

    def preprocess(self, payload: Any) -> str | None:
        if payload is None:
            return None
        try:
            url = getattr(payload, "url", None)
            if isinstance(url, str) and url.startswith(DATA_URL_PREFIX):
                return save_inline_image(url, self.GRADIO_CACHE)
            if not getattr(payload, "path", None):
                raise ImageInputError("No image was sent.")
            check_image_file(payload.path)
            return str(payload.path)
        except ImageInputError as err:
            raise gr.Error(str(err), title=READ_TITLE) from None


MARKDOWN_SPECIAL = set("\\`*_{}[]()!|<>~&")  # inline specials (one line: no list or heading marks)


def escape_markdown(text: str, limit: int = 100) -> str:
    """``text`` (a visitor's) as literal Markdown: control characters dropped, at most ``limit`` characters,
    every character Markdown or HTML would interpret inside a line escaped (newlines are dropped)."""
    text = "".join(c for c in str(text) if c.isprintable())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return "".join(f"&#{ord(c)};" if c in "<>&" else ("\\" + c if c in MARKDOWN_SPECIAL else c) for c in text)


# --- time: a budget per heavy request, and a stop when its visitor leaves ---------------------------------
class WorkStopped(BaseException):
    """Raised inside a heavy handler's thread by :class:`Watchdog` (a BaseException, like KeyboardInterrupt,
    so that no ``except Exception`` in the work swallows it; ``with`` blocks and ``finally`` clauses run)."""


@dataclass
class Watch:
    """One heavy handler being watched: its thread, deadline and a test of whether its visitor is still there."""

    thread_id: int
    deadline: float  # time.monotonic()
    budget_s: float
    alive: Callable[[], bool]
    reason: str = ""  # why it was stopped ("" while it runs)


class Watchdog:
    """One thread for the server that stops heavy handlers which ran past their budget or whose visitor
    disconnected: it raises :class:`WorkStopped` in the handler's thread (``PyThreadState_SetAsyncExc``),
    which Python delivers between two bytecodes, i.e. between two torch operations of a forward. The
    exception is raised at most once per watch, and a pending one is cleared when the handler returns."""

    def __init__(self, poll_s: float = 0.2) -> None:
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._watches: dict[int, Watch] = {}  # id(watch) -> watch
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[..., Any], budget_s: float, alive: Callable[[], bool], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` under a budget; ``gr.Error`` with the reason when it was stopped."""
        watch = Watch(threading.get_ident(), time.monotonic() + budget_s, budget_s, alive)
        with self._lock:
            self._watches[id(watch)] = watch
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="tomviz-watchdog", daemon=True)
                self._thread.start()
        try:
            try:
                return fn(*args, **kwargs)
            finally:
                self._release(watch)
        except WorkStopped:
            self._release(watch)  # when the exception arrived before the release above ran
            raise gr.Error(watch.reason, title="Stopped") from None
        except gr.Error as err:
            if isinstance(err.__cause__, WorkStopped) or watch.reason:
                raise gr.Error(watch.reason or str(err), title="Stopped") from None
            raise

    def _release(self, watch: Watch) -> None:
        with self._lock:
            self._watches.pop(id(watch), None)
            if watch.reason:  # fired: clear the exception if it is still pending
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(watch.thread_id), None)

    def _loop(self) -> None:
        while True:
            time.sleep(self._poll_s)
            with self._lock:
                for watch in list(self._watches.values()):
                    if watch.reason:
                        continue
                    if time.monotonic() > watch.deadline:
                        watch.reason = (f"This request ran for its budget of {watch.budget_s:g} s and was stopped so "
                                        "that others can use the model. Ask for less work (fewer samples, settings, "
                                        "or a later layer) and try again.")
                    elif not _safe(watch.alive):
                        watch.reason = "The visitor who asked for this work left; it was stopped."
                    if watch.reason:
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(watch.thread_id),
                                                                   ctypes.py_object(WorkStopped))


def _safe(test: Callable[[], bool]) -> bool:
    try:
        return bool(test())
    except Exception:  # noqa: BLE001 - a failing test must not stop the watchdog; count as alive
        return True
