"""Shared pieces of the tabs: the example inputs, input widgets, model/method choices and the conversion of errors
to UI messages."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import gradio as gr

import tomviz
from tomviz.merge.checks import MAX_RATIO, SCHEDULES, ScheduleError
from tomviz.models.hub import DEFAULT_MODEL
from tomviz.inputs.image import ImageInputError
from tomviz.ui.guards import ImageFile
from tomviz.models.adapter import supported_labels

log = logging.getLogger("tomviz.app")

IMAGE_MODELS = [DEFAULT_MODEL["image"], "facebook/deit-small-patch16-224", "google/vit-base-patch16-224", "facebook/dinov2-small"]
TEXT_MODELS = [DEFAULT_MODEL["text"], "bert-base-uncased", "sentence-transformers/all-MiniLM-L6-v2"]
MODALITIES = ("image", "text")  # the inputs a tab that takes either can be switched between
MODEL_HELP = ("Embedded models work offline; type any Hugging Face model id of a supported architecture "
              f"({supported_labels()}).")  # the registered adapters' labels

ASSETS = Path(__file__).resolve().parents[2] / "assets"
EXAMPLE_IMAGES = [str(p) for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg",
                                      "hubble_deep_field.jpg", "grace_hopper.jpg") if (p := ASSETS / name).exists()]
EXAMPLE_PROMPTS = [
    "Token merging speeds up transformers by averaging tokens that carry the same information.",
    "The cat sat on the mat, and the dog sat on the log next to the cat.",
    "Rear Admiral Grace Hopper wrote one of the first compilers and popularised the term debugging.",
    "Paris is the capital of France; Berlin is the capital of Germany; Rome is the capital of Italy.",
]

# Bounds of the public server (README, "The public server's bounds"). Every endpoint argument is untrusted.
SESSION_TTL_S = float(os.environ.get("TOMVIZ_SESSION_TTL_S", 1800))  # a visitor's traces and pictures (gr.State)
# are dropped this long after they were made
MAX_PROMPT_CHARS = 5000  # any free text box: prompts, CLIP texts, model ids, ratio lists
MAX_SEED = 2**31 - 1
# written downloads are deleted this long after they were made (Gradio serves its own copy from its cache)
DOWNLOAD_TTL_S = float(os.environ.get("TOMVIZ_DOWNLOAD_TTL_S", 300))
DOWNLOAD_ROOT = Path(tempfile.gettempdir()) / f"tomviz-downloads-{os.getuid() if hasattr(os, 'getuid') else 0}"


def session_state() -> gr.State:
    """A per-visitor ``gr.State`` that Gradio deletes ``SESSION_TTL_S`` after it was last set (and an hour
    after the visitor closes the page, Gradio's own rule for closed sessions)."""
    return gr.State(None, time_to_live=SESSION_TTL_S)


def download_folder() -> Path:
    """A new folder for one download, under ``DOWNLOAD_ROOT``; folders older than ``DOWNLOAD_TTL_S`` are
    removed first, so the files written for downloads stay bounded (Gradio copies returned files into its
    cache, which ``Blocks(delete_cache=...)`` cleans)."""
    DOWNLOAD_ROOT.mkdir(mode=0o700, exist_ok=True)
    cutoff = time.time() - DOWNLOAD_TTL_S
    for old in DOWNLOAD_ROOT.iterdir():
        try:
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:  # another request removed it
            pass
    folder = DOWNLOAD_ROOT / uuid.uuid4().hex
    folder.mkdir(mode=0o700)
    return folder


class PromptBox(gr.Textbox):
    """gr.Textbox's front end (``is_template``) that refuses text longer than ``MAX_PROMPT_CHARS`` on the
    server (gr.Textbox's ``max_length`` is checked in the browser only; API callers skip it)."""

    is_template = True

    def preprocess(self, payload: str | None) -> str | None:
        text = super().preprocess(payload)
        if text is not None and len(text) > MAX_PROMPT_CHARS:
            raise gr.Error(f"The text has {len(text)} characters; this server takes at most {MAX_PROMPT_CHARS}.",
                           title="Text too long")
        return text


ImageUpload = ImageFile  # the bounded image input: header checked before any decode (tomviz/ui/guards.py)


def method_choices() -> list[tuple[str, str]]:
    """``(label, name)`` pairs for the method dropdown, read from ``tomviz.METHODS`` at build time."""
    return [(cls.label or name, name) for name, cls in tomviz.METHODS.items()]


def outputs_type(name: str, views: type, first: Sequence[tuple[str, Any]] = (),
                 then: Sequence[tuple[str, Any]] = ()) -> type:
    """A NamedTuple type: the fields ``first``, every field of the NamedTuple ``views`` (same names and
    types, in order), then ``then``. For what a model run returns when a redraw returns ``views``."""
    return NamedTuple(name, [*first, *views.__annotations__.items(), *then])


def methods_for(modality: str) -> list[tuple[str, str]]:
    """``(label, name)`` of the methods that run on ``modality`` inputs."""
    return [(label, name) for label, name in method_choices() if modality in tomviz.METHODS[name].modalities]


def input_of(modality: str, image: str | None, prompt: str | None) -> Any:
    """The input a ``modality`` switch selects: the image path or the prompt; ValueError when it is missing."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown input modality {modality!r}: use 'image' or 'text'")
    if modality == "image":
        if image is None:
            raise ValueError("no image: upload a photo or pick an example")
        return image
    if prompt is None or not str(prompt).strip():
        raise ValueError("the prompt is empty: type some text or pick an example")
    return str(prompt)


def merge_controls(default_model: str, models: list[str]) -> tuple[gr.Dropdown, gr.Dropdown, gr.Radio, gr.Checkbox, gr.Slider]:
    """The settings row shared by both tabs: model, method, schedule, proportional attention, ratio."""
    model = gr.Dropdown(models, value=default_model, label="Model", allow_custom_value=True, info=MODEL_HELP)
    method = gr.Dropdown(method_choices(), value="tome", label="Merge method")
    schedule = gr.Radio(list(SCHEDULES), value="constant", label="Schedule",
                        info="How the removed tokens spread over the layers")
    prop_attn = gr.Checkbox(value=True, label="Proportional attention (add log size to attention logits)")
    ratio = gr.Slider(0.0, MAX_RATIO, value=0.5, step=0.05, label="Merge ratio",
                      info="Fraction of the input tokens removed by the last layer (runs the model on release)")
    return model, method, schedule, prop_attn, ratio


class LayerSlider(gr.Slider):
    """gr.Slider's front end (``is_template``) for a 1-based layer: its maximum follows the model, and a
    layer beyond it (an API call with the default after a shallower model) is clamped, not refused."""

    is_template = True

    def preprocess(self, payload: float | None) -> float | None:
        if payload is None or payload != payload:  # None or NaN
            return payload
        return float(max(1, round(payload)))  # the handlers clamp it to the model's last layer


def layer_index(layer: float, num_layers: int) -> int:
    """A 1-based slider value → 0-based layer, clamped to ``1..num_layers``."""
    return int(min(max(int(round(layer)), 1), num_layers)) - 1


def layer_slider(num_layers: int, value: int) -> LayerSlider:
    return LayerSlider(1, num_layers, value=value, step=1, label="Layer",
                       info="Show the groups after this layer (no model run)")


@contextlib.contextmanager
def user_errors(what: str) -> Iterator[None]:
    """Turn the errors users can cause into a ``gr.Error`` with a readable message; log the rest."""
    try:
        yield
    except gr.Error:
        raise
    except (ImageInputError, tomviz.ModelLoadError, ScheduleError, ValueError, IndexError) as err:
        raise gr.Error(str(err), title=f"Cannot {what}") from err
    except Exception as err:  # noqa: BLE001 - keep serving; say what went wrong
        log.exception("unexpected error while trying to %s", what)
        raise gr.Error(f"{type(err).__name__}: {err}", title=f"Unexpected error while trying to {what}") from err


# Page styles (``launch(css=...)``): captions under pictures in a smaller grey; word pieces of one word sit
# flush against each other in gr.HighlightedText (its default margins read "token s" for "token" + "##s").
APP_CSS = """
.caption p { font-size: 0.85em; color: var(--body-text-color-subdued); margin: 0; }
#text-groups .token.highlighted { margin-left: 0; margin-right: 0; padding-left: 1px; padding-right: 1px; }
"""
