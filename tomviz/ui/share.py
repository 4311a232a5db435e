"""Shareable views: the page's URL query carries the settings, and a link opens the same view.

    ?tab=image&model=dinov2-small&method=tome&schedule=constant&ratio=0.5&layer=6&example=chelsea.png
    ?tab=text&model=minilm&method=tome&schedule=constant&ratio=0.5&layer=3&prompt=The+cat+sat
    ?tab=video&model=dinov2-small&method=holitom&ratio=0.9&frames=16&tau=0.8&segments=8&example=world.mp4

Every parameter is untrusted input: :func:`parse_view` checks each one, keeps the default for a bad
value and says why. A link names an example photo from ``assets/`` or an example clip (gradio's
``media_assets/videos``) by its file name only (never a server path); uploads are never put in links.
Handlers are module-level; no model runs here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import urlencode

import gradio as gr

from tomviz.merge import registry
from tomviz.merge.checks import check_ratio, check_schedule_name
from tomviz.merge.request import MergeRequest
from tomviz.models.hub import DEFAULT_MODELS, is_repo_id
from tomviz.ui.common import MAX_PROMPT_CHARS

TABS = ("image", "text", "video")
MAX_LAYER = 256
FRAME_RANGE = (4, 32)  # frames a Video-tab link (and the tab's slider) may ask for
MAX_SEGMENTS = 32  # FastVID's segment count c
# In the browser: the link → the full link (returned), and the page's own URL (history) when the link's tab is the
# one on screen: on page load both tabs inspect their example, and the one that finishes last must not replace
# the URL of the tab the visitor is looking at. ``link`` is the query the server made after a model run, or the
# current full link; with ``layer`` (a layer scrub) only that parameter changes, with no second server call.
LINK_JS = """(link, layer) => {
  if (!link) return link;
  let url;
  try { url = new URL(link, window.location.href); } catch (e) { return link; }
  if (layer !== undefined && layer !== null && layer !== '') url.searchParams.set('layer', String(Math.round(Number(layer))));
  const full = window.location.origin + window.location.pathname + url.search;
  const tab = url.searchParams.get('tab') || 'image';
  const shown = document.querySelector('button[role="tab"][aria-selected="true"]');
  const onScreen = shown ? shown.textContent.trim().toLowerCase() : 'image';
  if (onScreen.startsWith(tab)) {
    try { window.history.replaceState(null, '', full); } catch (e) {}
  }
  return full;
}"""
COPY_JS = """(url) => {
  try { navigator.clipboard.writeText(url); } catch (e) {}
  return url;
}"""


@dataclass
class View:
    """The settings a link asks for (defaults where it says nothing or something invalid)."""

    tab: str = "image"
    model: str | None = None  # None: the tab's default
    method: str = "tome"
    schedule: str = "constant"
    ratio: float = 0.5
    layer: int | None = None  # 1-based; None: the tab's default
    example: str | None = None  # an example photo's file name
    prompt: str | None = None
    frames: int | None = None  # Video tab: frames sampled; None: the tab's default
    tau: float | None = None  # Video tab: HoliTom's / FastVID's similarity threshold
    segments: int | None = None  # Video tab: FastVID's segment count
    problems: list[str] = field(default_factory=list)  # one readable sentence per refused parameter

    @property
    def request(self) -> MergeRequest:
        """The merge settings the link asks for, for its tab's inputs."""
        return MergeRequest(method=self.method, ratio=self.ratio, schedule=self.schedule, modality=self.tab)


def parse_view(params: Mapping[str, str], examples: Sequence[str]) -> View:
    """Check a URL query (``params``: name → value); ``examples``: the example photos' (or, for a Video-tab
    link, clips') paths. Unknown parameters are ignored; a bad value keeps the default and adds a sentence to
    ``problems``."""
    view = View()
    names = [Path(p).name for p in examples]

    def refuse(key: str, value: str, why: str) -> None:
        shown = value if len(value) <= 60 else value[:57] + "..."
        view.problems.append(f"The link's {key}={shown!r} was ignored: {why}.")

    if (tab := params.get("tab")) is not None:
        if tab in TABS:
            view.tab = tab
        else:
            refuse("tab", tab, "use 'image', 'text' or 'video'")
    if (model := params.get("model")) is not None:
        if model in DEFAULT_MODELS or is_repo_id(model):  # the loader (untrusted=True) still decides what loads
            view.model = model
        else:
            refuse("model", model, "a link names an embedded model or a Hugging Face id such as 'facebook/dinov2-small'")
    for key, check in (("method", lambda name: method_name(name, view.tab)), ("schedule", check_schedule_name),
                       ("ratio", check_ratio)):  # the merge request's own checks and messages
        if (value := params.get(key)) is not None:
            try:
                setattr(view, key, check(value))
            except ValueError as err:
                refuse(key, value, str(err))
    if (layer := params.get("layer")) is not None:
        if layer.isdigit() and 1 <= int(layer) <= MAX_LAYER:
            view.layer = int(layer)
        else:
            refuse("layer", layer, f"the layer is a whole number from 1 to the model's depth (at most {MAX_LAYER})")
    if (example := params.get("example")) is not None:
        if example in names:
            view.example = example
        else:
            refuse("example", example, f"the example {'clips' if view.tab == 'video' else 'photos'} are {', '.join(names)}")
    if (prompt := params.get("prompt")) is not None:
        if len(prompt) <= MAX_PROMPT_CHARS and prompt.strip():
            view.prompt = prompt
        else:
            refuse("prompt", prompt, f"a prompt has 1 to {MAX_PROMPT_CHARS} characters")
    parse_clip_knobs(params, view, refuse)
    return view


def method_name(name: str, tab: str) -> str:
    """A registered method's name: a Video-tab link may name a temporal method (place ``clip``) or one that
    merges inside a video encoder; the other tabs' links an encoder method."""
    if tab == "video" and name in registry.names("clip"):
        return registry.entry(name, "clip").name
    return registry.entry(name, "encoder").name


def parse_clip_knobs(params: Mapping[str, str], view: View, refuse) -> None:
    """A Video-tab link's frames, τ and segments (``refuse(key, value, why)`` for a bad one)."""
    low, high = FRAME_RANGE
    if (frames := params.get("frames")) is not None:
        if frames.isdigit() and low <= int(frames) <= high:
            view.frames = int(frames)
        else:
            refuse("frames", frames, f"frames is a whole number from {low} to {high}")
    if (tau := params.get("tau")) is not None:
        try:
            value = float(tau)
        except ValueError:
            value = float("nan")
        if 0.0 <= value <= 1.0:  # NaN fails both
            view.tau = value
        else:
            refuse("tau", tau, "τ is a similarity from 0 to 1")
    if (segments := params.get("segments")) is not None:
        if segments.isdigit() and 1 <= int(segments) <= MAX_SEGMENTS:
            view.segments = int(segments)
        else:
            refuse("segments", segments, f"segments is a whole number from 1 to {MAX_SEGMENTS}")


def view_query(tab: str, model: str, method: str, schedule: str, ratio: float, layer: float,
               example: str | None = None, prompt: str | None = None) -> str:
    """The URL query (starting with ``?``) for a view; ``example`` is a file name, never a path."""
    params = {"tab": tab, "model": (model or "").strip(), "method": method, "schedule": schedule,
              "ratio": f"{float(ratio):g}", "layer": str(int(round(float(layer))))}
    if example:
        params["example"] = Path(example).name
    if prompt:
        params["prompt"] = prompt[:MAX_PROMPT_CHARS]
    return "?" + urlencode(params)


def clip_query(model: str, method: str, ratio: float, frames: float, tau: float | None, segments: float | None,
               example: str | None = None) -> str:
    """The URL query of a Video-tab view; ``example`` is an example clip's file name (None for an upload: its
    settings are shared, never the upload)."""
    params = {"tab": "video", "model": (model or "").strip(), "method": method, "ratio": f"{float(ratio):g}",
              "frames": str(int(round(float(frames))))}
    if tau is not None:
        params["tau"] = f"{float(tau):g}"
    if segments is not None:
        params["segments"] = str(int(round(float(segments))))
    if example:
        params["example"] = Path(example).name
    return "?" + urlencode(params)


def request_view(request: gr.Request | None, examples: Sequence[str], tab: str) -> View:
    """The view in the page's URL (a default view without a request). Problems are shown as warnings by
    the ``tab`` the link is for (links without a valid tab are Image-tab links)."""
    params = dict(request.query_params) if request is not None and request.query_params is not None else {}
    view = parse_view(params, examples)
    if view.tab == tab:
        for problem in view.problems:
            gr.Warning(problem, title="Part of the link was ignored")
    return view


def selected_tab(request: gr.Request):
    """``gr.Tabs`` selecting the tab the link names (the Image tab by default); warnings come from the tabs."""
    params = dict(request.query_params) if request is not None and request.query_params is not None else {}
    return gr.Tabs(selected=params["tab"] if params.get("tab") in ("text", "video") else "image")


class NotThisTab(gr.Error):
    """Raised by a tab's page-load step when the link has nothing for it to open: it stops the event's
    ``.success`` chain (no model runs) and is not shown in the page."""

    def __init__(self) -> None:
        super().__init__("the link has nothing for this tab to open", visible=False, print_exception=False)
