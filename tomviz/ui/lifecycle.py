"""The life-cycle the Image and Text tabs share, written once.

1. **Inspect**: a model run on the input (:func:`analyse_input`) draws the views of the chosen layer, with
   the clicked token's group if there is one, and the figures of the whole run (:func:`run_views`, pictures:
   they change with every ratio). Then the visitor's grid of ratios is computed in the background
   (:mod:`tomviz.ratio_grid`); a ratio already in it is answered from memory (:func:`remembered`), no model,
   in one event that carries its pictures inline and the selection and link (:func:`from_memory`).
2. **Redraw a layer**: the tab's ``layer_views`` from the stored trace, no model (:func:`wire_layer`).
3. **Select**: a click selects an input token's group (:func:`select`); :func:`lineage_panel` says how the
   group formed.
4. **After the run**: :func:`after_run` keeps the selection when the new trace still has that token, and
   makes the link to the view (the Text tab redraws its cheap views there too, for a click during the run).
5. **Open from a link**: :func:`opened_view` and :func:`view_settings` give the settings a page opens on.

A tab supplies a :class:`TabKind` (what differs: the modality, its defaults, which tokens a click may select
and how they are named) and its own pictures of one layer; the functions here do the rest. Handlers are
module-level functions (testable without a browser); the ``wire_*`` functions connect the same events in
both tabs.
"""
from __future__ import annotations

import contextvars
import inspect as inspect_module
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, NamedTuple

import gradio as gr

from tomviz import ratio_grid
from tomviz.analysis import Analysis, Settings, analyse
from tomviz.lineage import group_lineage
from tomviz.render.charts import gflops_picture, token_count_picture
from tomviz.render.lineage import lineage_markdown
from tomviz.render.text import fidelity_markdown, speed_markdown
from tomviz.trace import Trace
from tomviz.ui.common import user_errors
from tomviz.ui.pictures import Picture, inline
from tomviz.ui.server import client_key
from tomviz.ui.share import COPY_JS, LINK_JS, View, request_view

QUIET = dict(queue=False, show_progress="hidden")  # redraws and small follow-ups: no queue, no spinner


@dataclass(frozen=True)
class TabKind:
    """What differs between the Image and the Text tab."""

    tab: str  # "image" | "text": the modality analysed and the link's ``tab``
    default_model: str
    default_layer: int  # 1-based: the layer slider's value when a link names none
    thing: str  # what one input token is called in messages and in the lineage: "patch" | "token"
    hint: str  # the lineage panel before a click
    first_selectable: Callable[[Trace], int]  # the first input token a click may select
    token_names: Callable[[Trace], list[str]]  # every input token's name in the lineage, [N0]
    note_title: str = "Warning"  # the title of the warnings that show the analysis' notes


# --- 1. inspect ------------------------------------------------------------------------------------
RUN_FIELDS: list[tuple[str, Any]] = [  # the views of a run that a layer change leaves alone
    ("counts", "Image.Image"),  # token count per layer (a picture: render/charts.py)
    ("speed", str),
    ("gflops", "Image.Image"),  # GFLOPs per layer (a picture)
    ("fidelity", str),
    ("summary", "dict[str, Any] | None"),  # the JSON digest the API returns
    ("layer", Any),  # gr.Slider update (maximum follows the model)
]


def run_outputs(name: str, drawn: Iterable[tuple[str, Any]]) -> type:
    """The NamedTuple a model run returns, one field per output component (wired in this order): the
    session, the pictures ``drawn`` (``(name, type)`` pairs), then :data:`RUN_FIELDS`."""
    return NamedTuple(name, [("session", "Analysis | None"), *drawn, *RUN_FIELDS])


class Visitor(NamedTuple):
    """Who asks: the page's Gradio session and tab (one grid each: the Image and the Text tab of one page keep
    their own) and the client's address (a share of the grids)."""

    session: str  # "<session hash>:<tab>"
    client: str


def visitor_of(request: gr.Request | None, tab: str) -> Visitor | None:
    """The visitor behind ``request`` in ``tab`` (None for a call without a session, e.g. a handler called
    directly)."""
    session = getattr(request, "session_hash", None) if request is not None else None
    if not session:
        return None
    return Visitor(f"{session}:{tab}", client_key(request))


def remembered(visitor: Visitor | None, x: Any, settings: Settings, session: Analysis | None) -> Analysis | None:
    """The analysis of ``x`` under ``settings`` from the visitor's grid, with the session's own photo attached
    (the grid keeps none), or None when the grid does not hold it or the session shows another input."""
    if visitor is None or session is None:
        return None
    stored = ratio_grid.GRIDS.lookup(visitor.session, x, settings)
    if stored is None or stored.reference.key != session.reference.key:
        return None
    return replace(stored, image=session.image)


class NotRemembered(gr.Error):
    """A ratio release that the visitor's grid cannot answer (:func:`from_memory`): not shown in the page;
    the model run that follows it (in the queue) answers instead."""

    def __init__(self, why: str) -> None:
        super().__init__(why, visible=False, print_exception=False)


_MEMORY_ONLY = contextvars.ContextVar("tomviz_memory_only", default=False)  # set inside from_memory's handler


def analyse_input(kind: TabKind, x: Any, ratio: float, model: str | None, method: str, schedule: str,
                  prop_attn: bool, session: Analysis | None, request: gr.Request | None = None) -> Analysis:
    """The analysis of ``x``: from the visitor's grid when it holds this ratio, else one model run (reusing the
    session's unmerged reference for the same input; background grid work waits for it). Then the visitor's
    grid for these settings is made sure of (other settings cancel the old one). The analysis' notes show as
    warnings. Call it inside :func:`~tomviz.ui.common.user_errors`."""
    settings = Settings(model=(model or kind.default_model).strip(), method=method, ratio=ratio, schedule=schedule,
                        prop_attn=bool(prop_attn))
    visitor = visitor_of(request, kind.tab)
    analysis = remembered(visitor, x, settings, session)
    if analysis is None and _MEMORY_ONLY.get():
        raise NotRemembered("this ratio is not in the visitor's grid yet")
    if analysis is None:
        reference = session.reference if session is not None else None
        with ratio_grid.FOREGROUND:
            analysis = analyse(x, settings, reference, modality=kind.tab)
    if visitor is not None:
        ratio_grid.GRIDS.start(visitor.session, visitor.client, x, analysis, modality=kind.tab)
    for note in analysis.notes:
        gr.Warning(note, title=kind.note_title)
    return analysis


def run_views(analysis: Analysis, layer: int) -> dict[str, Any]:
    """:data:`RUN_FIELDS` by name for ``analysis``; ``layer`` (0-based) is the slider's new value (left as it is
    for an answer from memory: same model, same layers, and one component fewer for the page to update)."""
    speed, trace = analysis.speed, analysis.trace
    return dict(counts=token_count_picture(trace), speed=speed_markdown(speed),
                gflops=gflops_picture(speed.merged_gflops, speed.unmerged_gflops),
                fidelity=fidelity_markdown(analysis.fidelity), summary=analysis.summary(),
                layer=gr.skip() if _MEMORY_ONLY.get() else gr.Slider(maximum=trace.num_layers, value=layer + 1))


# --- 3. select -------------------------------------------------------------------------------------
def valid_token(kind: TabKind, session: Analysis | None, token: int | None) -> int | None:
    """``token`` if a click may select it in the session's trace, else None (a new input may have fewer)."""
    if session is None or token is None:
        return None
    trace = session.trace
    return int(token) if kind.first_selectable(trace) <= int(token) < trace.num_input_tokens else None


def lineage_panel(kind: TabKind, analysis: Analysis, token: int | None) -> str:
    """The markdown that says how the selected token's group formed (the hint before any click)."""
    if token is None:
        return kind.hint
    trace = analysis.trace
    return lineage_markdown(group_lineage(trace, token), kind.token_names(trace), what=kind.thing)


def selection_type(name: str, drawn: Iterable[tuple[str, Any]]) -> type:
    """The NamedTuple a click returns, one field per output component (wired in this order): the selected
    input token (session state), the views ``drawn`` with its group, and its lineage; gr.skip() leaves a
    component as it is."""
    return NamedTuple(name, [("selected", Any), *drawn, ("lineage", Any)])


def no_selection(kind: TabKind, selection: type) -> tuple:
    """Nothing selected (no result yet): the views as they are, the hint in the lineage panel."""
    return selection(None, *[gr.skip()] * (len(selection._fields) - 2), kind.hint)


def unchanged(selection: type) -> tuple:
    """A click on nothing selectable (between tiles, on a caption): every component as it is."""
    return selection(*[gr.skip()] * len(selection._fields))


def select(kind: TabKind, selection: type, session: Analysis | None, token: int | None,
           draw: Callable[[Analysis, int | None], dict[str, Any]]) -> tuple:
    """The selection of ``token`` (None, or one a click may not select, clears it): ``draw(session, token)``
    gives the views by field name."""
    if session is None:
        return no_selection(kind, selection)
    with user_errors(f"select this {kind.thing}"):
        token = valid_token(kind, session, token)
        return selection(selected=token, lineage=lineage_panel(kind, session, token), **draw(session, token))


# --- 4. after the run ------------------------------------------------------------------------------
def after_run_type(name: str, redrawn: Iterable[tuple[str, Any]] = ()) -> type:
    """The NamedTuple that follows a model run, one field per output component (wired in this order): the
    selected input token (None when the new trace has no such token), the views ``redrawn`` with its group,
    its lineage in the new trace (or the hint), and the URL query of the view (the browser makes it the full
    link, ``LINK_JS``)."""
    return NamedTuple(name, [("selected", Any), *redrawn, ("lineage", Any), ("link", str)])


def after_run(kind: TabKind, after: type, session: Analysis | None, selected: int | None, link: str,
              draw: Callable[[Analysis, int | None], dict[str, Any]] | None = None) -> tuple:
    """After a model run (which drew the selection it was given): the selection and its lineage in the new
    trace, and the link to the view, in one event (each event costs the page a pass over every component's
    state, BENCHMARKS.md "App latency"). With ``draw`` (views cheap to redraw) the selected group is drawn
    again, so a click made while the model ran shows too; the views it does not give are left as they are."""
    token = valid_token(kind, session, selected)
    with user_errors(f"follow the selected {kind.thing}"):
        views = draw(session, token) if draw is not None and token is not None else {}
        lineage = lineage_panel(kind, session, token)
    redrawn = {name: views.get(name, gr.skip()) for name in after._fields[1:-2]}
    return after(selected=token, lineage=lineage, link=link, **redrawn)


# --- 5. open from a link ---------------------------------------------------------------------------
def opened_view(kind: TabKind, request: gr.Request | None, examples: list[str]) -> View:
    """The view a page opens on in this tab: the link's when it is a link to this tab (its problems shown as
    warnings), else the defaults."""
    view = request_view(request, examples, tab=kind.tab)
    return view if view.tab == kind.tab else View(tab=kind.tab)


def view_settings(kind: TabKind, view: View) -> tuple[str, str, str, float, int]:
    """(model, method, schedule, ratio, layer) of ``view``, the tab's defaults where it names none."""
    return view.model or kind.default_model, view.method, view.schedule, view.ratio, view.layer or kind.default_layer


# --- layout pieces and wiring -----------------------------------------------------------------------
def run_charts(tab: str) -> tuple[Picture, Picture]:
    """The token-count and GFLOPs pictures of a run in ``tab`` (laid out in the current row; elem ids
    ``<tab>-token-count`` and ``<tab>-gflops``); their titles are in the pictures (a label badge would cover them)."""
    return tuple(Picture(label=label, show_label=False, format="png", interactive=False, elem_classes=["run-chart"],
                         elem_id=f"{tab}-{name}") for label, name in (("Token count", "token-count"), ("GFLOPs", "gflops")))


def wire_files(button: gr.Button, make: Callable, inputs: list, box: gr.File, api_name: str) -> None:
    """``button`` writes files with ``make`` (its API endpoint ``api_name`` returns the paths), then the page
    shows them in ``box``, hidden until then."""
    button.click(make, inputs=inputs, outputs=box, api_name=api_name).success(
        lambda: gr.File(visible=True), None, box, api_visibility="private", **QUIET)


def with_parameters(names: list[str]) -> Callable[[Callable], Callable]:
    """Give a ``handler(*args)`` the signature Gradio reads: one parameter per input component ``names``, then
    the ``gr.Request`` (which Gradio passes last, positionally)."""
    kind = inspect_module.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect_module.Parameter(name, kind) for name in names]
    params.append(inspect_module.Parameter("request", kind, default=None))

    def give(handler: Callable) -> Callable:
        handler.__signature__ = inspect_module.Signature(params)
        handler.__annotations__ = {"request": gr.Request}
        return handler

    return give


def answer_inputs(inputs: list[str], link_inputs: list[str]) -> list[str]:
    """The components a ratio release reads (:func:`from_memory`): ``inspect``'s ``inputs``, then the
    ``link_inputs`` not among them."""
    return [*inputs, *[name for name in link_inputs if name not in inputs]]


ANSWER_FOLLOW = ("selected", "lineage", "link")  # what a ratio answer adds to inspect's outputs (after's fields)


def from_memory(inspect: Callable, after: Callable, inputs: list[str], link_inputs: list[str]) -> Callable:
    """A ratio release answered from the visitor's grid only, outside the model queue, in one event: the
    handler takes the components :func:`answer_inputs` names (then the request) and returns ``inspect``'s
    outputs followed by what ``after`` gives for them (:data:`ANSWER_FOLLOW`: the selection, its lineage and
    the link; the views ``after`` may redraw are not sent twice, ``inspect`` drew the selection). No second
    round-trip, and the pictures travel inside the answer (:mod:`tomviz.ui.pictures`: the tab's picture outputs
    are :class:`~tomviz.ui.pictures.Picture`), so the page fetches nothing more. When the grid lacks the ratio, or anything
    fails, it raises :class:`NotRemembered` (not shown in the page), so that the event's ``.failure`` runs
    ``inspect`` in the queue, which shows a real error once. ``inputs``/``link_inputs``: component names,
    in the order ``inspect`` and ``after`` (after the session and the selection) take them."""
    names = answer_inputs(inputs, link_inputs)

    @with_parameters(names)
    def answer(*args: Any) -> tuple:
        *values, request = args
        given = dict(zip(names, values))
        token = _MEMORY_ONLY.set(True)
        try:
            shown = inspect(*values[:len(inputs)], request=request)
            followed = after(shown[0], given["selected"], *[given[name] for name in link_inputs])  # shown[0]: the session
        except NotRemembered:
            raise
        except gr.Error as err:
            raise NotRemembered(str(err)) from err
        finally:
            _MEMORY_ONLY.reset(token)
        return inline((*shown, *[getattr(followed, name) for name in ANSWER_FOLLOW]))  # pictures in the answer

    return answer


def wire_runs(c: dict[str, Any], inspect: Callable, inputs: list[str], outputs: type, triggers: list,
              api_names: tuple[str, str, str], after: Callable, after_outputs: type, link_inputs: list[str],
              demo: gr.Blocks | None = None, open_view: Callable | None = None, opened: list[str] = ()) -> None:
    """The model runs of a tab (``api_names``: a change of input or settings, an example picked, the page
    opened with ``demo``), each followed by ``after`` (→ ``after_outputs``, see :func:`after_run_type`) and the
    full link in the browser. A release of the ratio slider is answered from the visitor's grid outside the
    queue, as a layer change is, with the selection and link in the same answer (:func:`from_memory`), and
    runs the model in the queue only on a miss.
    ``inputs``, ``link_inputs`` and ``opened`` (what ``open_view`` fills) name components of ``c``."""
    run_model = dict(inputs=[c[n] for n in inputs], outputs=[c[n] for n in outputs._fields], concurrency_id="model",
                     concurrency_limit=1)

    def follow(event, step: str = "then") -> None:
        (getattr(event, step)(after, [c["session"], c["selected"], *[c[n] for n in link_inputs]],
                              [c[n] for n in after_outputs._fields], api_visibility="private", **QUIET)
         .then(None, c["link"], c["link"], js=LINK_JS, **QUIET))  # the full link and the page's URL, in the browser

    follow(gr.on(triggers, inspect, api_name=api_names[0], trigger_mode="always_last", **run_model))
    follow(c["examples"].load_input_event.then(inspect, api_name=api_names[1], api_visibility="private", **run_model))
    release = c["ratio"].release(
        from_memory(inspect, after, inputs, link_inputs), [c[n] for n in answer_inputs(inputs, link_inputs)],
        [*run_model["outputs"], *[c[n] for n in ANSWER_FOLLOW]], api_visibility="private", trigger_mode="always_last",
        **QUIET)
    release.success(None, c["link"], c["link"], js=LINK_JS, **QUIET)  # answered from memory: the full link
    follow(release.failure(inspect, api_visibility="private", **run_model))  # not in memory: the model runs
    if demo is not None and open_view is not None:
        # queued (no model; its own slot): a warning about the link reaches the page only from a queued event
        page = demo.load(open_view, None, [c[n] for n in opened], api_visibility="private", show_progress="hidden")
        follow(page.then(inspect, api_name=api_names[2], api_visibility="private", **run_model))


def wire_layer(c: dict[str, Any], render_layer: Callable, inputs: list[str], views: type, api_name: str) -> None:
    """The layer slider: a redraw from the stored trace (no queue), then the link's layer, in the browser."""
    c["layer"].input(render_layer, inputs=[c[n] for n in inputs], outputs=[c[n] for n in views._fields],
                     api_name=api_name, trigger_mode="always_last", **QUIET,
                     ).then(None, [c["link"], c["layer"]], c["link"], js=LINK_JS, **QUIET)


def wire_selection(c: dict[str, Any], selection: type, clicks: list[tuple[str, Callable]], clear: Callable,
                   inputs: list[str], clear_api_name: str) -> None:
    """Clicks on the components named in ``clicks`` select a group; the clear button drops it; the copy
    button copies the link."""
    outputs = [c[n] for n in selection._fields]
    for name, handler in clicks:
        c[name].select(handler, [c[n] for n in inputs], outputs, **QUIET)
    c["clear"].click(clear, [c[n] for n in inputs], outputs, api_name=clear_api_name, **QUIET)
    c["copy"].click(None, c["link"], c["link"], js=COPY_JS, queue=False)
