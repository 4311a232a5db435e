"""The instant ratio through the tabs' handlers (tomviz/ui/lifecycle.py + tomviz/ratio_grid.py), on the
embedded models: after an inspect the visitor's grid fills in the background; a ratio release it holds is
answered without running the model (model calls counted), a ratio it lacks runs the model, and new settings
cancel the grid."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest

from tomviz import ratio_grid
from tomviz.ratio_grid import ForegroundGate, GridStore
from tomviz.ui import image_tab, lifecycle, text_tab
from tomviz.ui.pictures import Inline

pytestmark = pytest.mark.slow  # the embedded dinov2-small / minilm

CAT = str(Path(__file__).resolve().parents[2] / "assets" / "chelsea.png")
PROMPT = "The cat sat on the mat, and the dog sat on the log next to the cat."


def _request(session: str, host: str = "10.0.0.1") -> gr.Request:
    return gr.Request(session_hash=session, client=SimpleNamespace(host=host))


@pytest.fixture
def grids(monkeypatch):
    """A fresh store for the test, and the tabs' model calls counted (the store's own runs are not)."""
    store = GridStore(gate=ForegroundGate())
    monkeypatch.setattr(ratio_grid, "GRIDS", store)
    monkeypatch.setattr(ratio_grid, "FOREGROUND", store._gate)
    calls = []
    real = lifecycle.analyse

    def counted(x, settings, *args, **kwargs):
        calls.append(settings.ratio)
        return real(x, settings, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "analyse", counted)
    store.calls = calls
    yield store
    store.close()


def _wait_ready(store: GridStore, visitor: str, timeout: float = 300.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        grid = store.grid(visitor)
        if grid is not None and grid.ready:
            return grid
        time.sleep(0.1)
    raise AssertionError(f"the grid of {visitor} was not ready after {timeout} s")


def test_image_ratio_release_answers_from_the_grid(grids):
    request = _request("image-visitor")
    first = image_tab.inspect_image(CAT, ratio=0.5, layer=6, request=request)
    assert grids.calls == [0.5]
    grid = _wait_ready(grids, "image-visitor:image")
    assert not grid.errors and sorted(grid.results) == ratio_grid.grid_ratios()

    moved = image_tab.inspect_image(CAT, ratio=0.7, layer=6, session=first.session, request=request)
    assert grids.calls == [0.5]  # no model run
    assert moved.session.image is first.session.image  # the session's own photo, re-attached
    assert moved.session.trace.token_counts()[-1] == 257 - round(0.7 * 256)
    direct = image_tab.layer_views(replace(grid.results[0.7], image=first.session.image), 5, 0.8)
    assert np.array_equal(np.asarray(moved.overlay), np.asarray(direct.overlay))
    assert moved.counts.size == moved.gflops.size  # the ratio's charts, as pictures

    image_tab.inspect_image(CAT, ratio=0.33, layer=6, session=moved.session, request=request)
    assert grids.calls == [0.5, 0.33]  # not a grid ratio: the model runs

    image_tab.inspect_image(CAT, ratio=0.5, method="pitome", layer=6, session=moved.session, request=request)
    assert grid.cancelled.is_set() and grids.grid("image-visitor:image") is not grid  # new settings: a new grid
    assert grids.calls[-1] == 0.5 and len(grids.calls) == 3


def test_text_ratio_release_answers_from_the_grid_and_measures_its_memory(grids):
    request = _request("text-visitor")
    first = text_tab.inspect_text(PROMPT, ratio=0.5, model="minilm", layer=3, request=request)
    grid = _wait_ready(grids, "text-visitor:text")
    moved = text_tab.inspect_text(PROMPT, ratio=0.25, model="minilm", layer=3, session=first.session, request=request)
    assert grids.calls == [0.5] and moved.session.trace.token_counts() == grid.results[0.25].trace.token_counts()
    assert 0 < grids.nbytes("text-visitor:text") < 0.5 * 2**20  # the README's "under 0.1 MB" for this prompt
    other = text_tab.inspect_text(PROMPT + " Again.", ratio=0.25, model="minilm", layer=3, session=moved.session,
                                  request=request)
    assert grids.calls == [0.5, 0.25] and other.session.trace.num_input_tokens > moved.session.trace.num_input_tokens


def test_a_call_without_a_session_runs_the_model_and_keeps_no_grid(grids):
    image_tab.inspect_image(CAT, ratio=0.5, layer=6)
    assert grids.calls == [0.5] and grids.grid("image-visitor:image") is None


def test_a_ratio_release_is_answered_outside_the_queue_and_runs_the_model_only_on_a_miss(grids):
    request = _request("release-visitor")
    first = image_tab.inspect_image(CAT, ratio=0.5, layer=6, request=request)
    _wait_ready(grids, "release-visitor:image")
    inputs = ["image", "ratio", "model", "method", "schedule", "prop_attn", "layer", "opacity", "session", "selected"]
    link_inputs = ["example_name", "model", "method", "schedule", "ratio", "layer"]
    assert lifecycle.answer_inputs(inputs, link_inputs) == [*inputs, "example_name"]
    memory = lifecycle.from_memory(image_tab.inspect_image, image_tab.after_run, inputs, link_inputs)
    args = dict(model="dinov2-small", method="tome", schedule="constant", prop_attn=True, layer=6, opacity=0.8,
                session=first.session, selected=first.session.trace.num_protected + 3)

    answer = memory(CAT, 0.7, *args.values(), "chelsea.png", request)
    hit = image_tab.ImageOutputs(*answer[:len(image_tab.ImageOutputs._fields)])
    assert hit.session.trace.token_counts()[-1] == 257 - round(0.7 * 256) and grids.calls == [0.5]  # from memory
    assert isinstance(hit.layer, type(gr.skip()))  # same model: the layer slider is left as it is
    pictures = ("overlay", "strip", "cluster", "heat", "counts", "gflops")
    assert all(isinstance(getattr(hit, name), Inline) for name in pictures)  # sent inside the answer
    selected, lineage, link = answer[len(image_tab.ImageOutputs._fields):]  # after the run, in the same answer
    assert selected == args["selected"] and "patch (1, 4)" in lineage
    assert link == image_tab.view_link("chelsea.png", "dinov2-small", "tome", "constant", 0.7, 6) and "ratio=0.7" in link

    with pytest.raises(lifecycle.NotRemembered) as missed:  # not a grid ratio: the event's .failure runs the model
        memory(CAT, 0.33, *args.values(), "chelsea.png", request)
    assert not missed.value.visible and grids.calls == [0.5]
    with pytest.raises(lifecycle.NotRemembered) as failed:  # a real error: hidden here, shown once by the model run
        memory(CAT, 0.7, "no/such-model", *list(args.values())[1:], "chelsea.png", request)
    assert not failed.value.visible


def test_gradio_passes_the_request_to_the_ratio_handler():
    from gradio.helpers import special_args

    request = object()
    inputs = ["prompt", "ratio", "model", "method", "schedule", "prop_attn", "layer", "session", "selected"]
    handler = lifecycle.from_memory(text_tab.inspect_text, text_tab.after_run, inputs,
                                    ["prompt", "model", "method", "schedule", "ratio", "layer"])
    assert special_args(handler, list(range(9)), request)[0] == [*range(9), request]  # the request last
