"""The public server's plumbing: bounds that hold for every endpoint, installed on the app ``app.py`` launches.

* **Request bodies** (:class:`BodyLimit`): a POST other than Gradio's own upload route (which
  ``launch(max_file_size=...)`` bounds) is refused with HTTP 413 beyond ``MAX_BODY_BYTES``, from its
  ``Content-Length`` or while it is received, before any JSON is parsed. An image sent inline as a
  ``data:`` URL inside ``/queue/join`` or ``/call/...`` is bounded by this.
* **Time** (:func:`budgeted`): the events declared ``**HEAVY`` (Banzhaf, CLIP × text, sweeps, VLM answers)
  share one slot of their own, so a heavy request never holds the slot of the one-forward runs
  (``concurrency_id="model"``), and each runs under ``HEAVY_BUDGET_S``; it is stopped when the budget is
  spent or its visitor disconnects (:class:`tomviz.ui.guards.Watchdog`).
* **Queue share** (:func:`share_queue`): one visitor (a client address) may have at most
  ``QUEUE_PER_VISITOR`` requests waiting or running, so no visitor fills the queue for the others.
* **Sessions** (:class:`ClientStateHolder`): each client address keeps at most ``SESSIONS_PER_CLIENT``
  sessions' state (its own least recently used dropped first); above the global cap the client holding
  the most sessions loses its oldest, so opening hundreds of sessions evicts only the opener's own.

A client address is the connection's peer, or, behind a proxy, the last entry of the header named by
``$TOMVIZ_CLIENT_HEADER`` (on Hugging Face Spaces ``x-forwarded-for`` by default: the entry its proxy adds).
This module relies on Gradio 6's ``Queue.push``, ``Queue.active_jobs`` and ``StateHolder`` (checked on 6.31).
"""
from __future__ import annotations

import functools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Callable

import gradio as gr
from gradio.context import LocalContext
from gradio.state_holder import StateHolder
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection

from tomviz.ui.guards import Watchdog

log = logging.getLogger("tomviz.app")

MAX_BODY_BYTES = int(float(os.environ.get("TOMVIZ_MAX_BODY_MB", 4)) * 2**20)  # JSON bodies of the API routes
HEAVY_BUDGET_S = float(os.environ.get("TOMVIZ_HEAVY_BUDGET_S", 60))  # seconds one heavy request may run
QUEUE_PER_VISITOR = int(os.environ.get("TOMVIZ_QUEUE_PER_VISITOR", 4))  # requests of one client waiting or running
SESSIONS_PER_CLIENT = int(os.environ.get("TOMVIZ_SESSIONS_PER_CLIENT", 8))  # sessions' state one client keeps
CLIENT_HEADER = os.environ.get("TOMVIZ_CLIENT_HEADER", "x-forwarded-for" if os.environ.get("SPACE_ID") else "")

HEAVY = dict(concurrency_id="heavy", concurrency_limit=1)  # long model work: its own slot, a time budget
UNKNOWN_CLIENT = "?"

WATCHDOG = Watchdog()


# --- who is asking ----------------------------------------------------------------------------------------
def client_key(request: Any) -> str:
    """The client address of a Starlette/FastAPI request or connection or a ``gr.Request`` (``UNKNOWN_CLIENT``
    if none): the one way every per-client cap names a client."""
    if request is None:
        return UNKNOWN_CLIENT
    if CLIENT_HEADER:
        headers = getattr(request, "headers", None) or {}
        forwarded = headers.get(CLIENT_HEADER)
        if forwarded:
            return forwarded.split(",")[-1].strip()
    client = getattr(request, "client", None)
    return str(getattr(client, "host", None) or UNKNOWN_CLIENT)


# --- request bodies ---------------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: POST/PUT/PATCH bodies over ``max_bytes`` get HTTP 413 before the route reads them
    (Gradio's ``/upload`` route is left to ``max_file_size``). A body within the bound is read once here
    and handed on; a JSON body's ``session_hash`` is recorded with the client address (:class:`ClientStateHolder`)."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH") or scope["path"].endswith("/upload"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(send)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        _record_session(scope, body)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Callable) -> None:
        text = json.dumps({"detail": f"The request is larger than this server accepts "
                                     f"({self.max_bytes // 2**20} MiB); send images through the upload route."})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": text.encode()})


def _record_session(scope: dict, body: bytes) -> None:
    if b'"session_hash"' not in body:
        return
    try:
        session = json.loads(body).get("session_hash")
    except (ValueError, AttributeError):
        return
    holder = getattr(scope.get("app"), "state_holder", None)
    if isinstance(session, str) and isinstance(holder, StateHolder):
        _per_client(holder).record(session, client_key(HTTPConnection(scope)))


# --- sessions ---------------------------------------------------------------------------------------------
class ClientStateHolder(StateHolder):
    """Gradio's ``StateHolder`` with eviction by client: a client beyond ``per_client`` sessions loses its own
    least recently used; beyond ``capacity`` in all, the client with the most sessions loses its oldest."""

    clients: "OrderedDict[str, str]"  # session hash -> client address

    @property
    def per_client(self) -> int:
        return SESSIONS_PER_CLIENT  # read per call: an operator (or a test) may change it on a running server

    def record(self, session_id: str, client: str) -> None:
        with self.lock:
            self.clients.setdefault(session_id, client)
            while len(self.clients) > 20 * max(1, self.capacity):  # forget addresses of long-gone sessions
                self.clients.popitem(last=False)

    def update(self, session_id: str) -> None:
        with self.lock:
            if session_id in self.session_data:
                self.session_data.move_to_end(session_id)
            owner = self.clients.get(session_id, UNKNOWN_CLIENT)
            mine = [s for s in self.session_data if self.clients.get(s, UNKNOWN_CLIENT) == owner]
            for old in mine[: max(0, len(mine) - self.per_client)]:
                self._evict(old)
            while len(self.session_data) > self.capacity:
                counts: dict[str, list[str]] = {}
                for s in self.session_data:  # oldest first
                    counts.setdefault(self.clients.get(s, UNKNOWN_CLIENT), []).append(s)
                self._evict(max(counts.values(), key=len)[0])

    def _evict(self, session_id: str) -> None:
        self.session_data.pop(session_id, None)
        self.time_last_used.pop(session_id, None)


def _per_client(holder: StateHolder) -> ClientStateHolder:
    """``holder`` turned into a :class:`ClientStateHolder` in place (once; its sessions are kept)."""
    if not isinstance(holder, ClientStateHolder):
        with holder.lock:
            if not isinstance(holder, ClientStateHolder):
                holder.clients = OrderedDict()
                holder.__class__ = ClientStateHolder
    return holder  # type: ignore[return-value]


# --- the queue: a share per visitor -----------------------------------------------------------------------
def share_queue(queue: Any, per_visitor: int | None = None) -> None:
    """Wrap Gradio's ``Queue.push`` so that a client with ``per_visitor`` requests waiting or running is
    told so (HTTP 503) instead of taking more of the queue (default: ``QUEUE_PER_VISITOR``, read per request);
    records each queued session's client."""
    if getattr(queue, "_tomviz_shared", False):
        return
    push = queue.push

    def mine(key: str) -> int:
        waiting = [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]
        running = [e for jobs in queue.active_jobs if jobs for e in jobs]
        return sum(1 for e in waiting + running if client_key(e.request) == key)

    async def push_shared(body: Any, request: Any, username: Any = None):
        key, share = client_key(request), QUEUE_PER_VISITOR if per_visitor is None else per_visitor
        if mine(key) >= share:
            return False, (f"You already have {share} requests waiting or running on this server; wait for "
                           "one to finish."), "queue_full"
        answer = await push(body=body, request=request, username=username)
        holder = getattr(queue.blocks, "state_holder", None)
        if answer[0] and getattr(body, "session_hash", None) and isinstance(holder, StateHolder):
            _per_client(holder).record(body.session_hash, key)
        return answer

    queue.push = push_shared
    queue._tomviz_shared = True


# --- heavy events: a time budget ----------------------------------------------------------------------------
def _current_event() -> Any:
    """Gradio's queue event of the running handler (None outside a queued event)."""
    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    for jobs in getattr(queue, "active_jobs", None) or []:
        for event in jobs or []:
            if event._id == event_id:
                return event
    return None


def budgeted(fn: Callable[..., Any], budget_s: float | None = None) -> Callable[..., Any]:
    """``fn`` run under the heavy budget (``HEAVY_BUDGET_S`` by default) and stopped when its visitor leaves."""
    if getattr(fn, "_tomviz_budgeted", False):
        return fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        event = _current_event()
        alive = (lambda: bool(event.alive) and not event.closed) if event is not None else (lambda: True)
        return WATCHDOG.run(fn, HEAVY_BUDGET_S if budget_s is None else budget_s, alive, *args, **kwargs)

    run._tomviz_budgeted = True  # type: ignore[attr-defined]
    return run


def install(demo: gr.Blocks) -> gr.Blocks:
    """Put the bounds on ``demo`` (call after ``demo.queue(...)``): heavy handlers budgeted, the queue shared."""
    for block_fn in demo.fns.values():
        if block_fn.concurrency_id == HEAVY["concurrency_id"] and block_fn.fn is not None:
            block_fn.fn = budgeted(block_fn.fn)
    share_queue(demo._queue)
    return demo


def app_options() -> dict:
    """``launch(app_kwargs=...)``: the body bound as the app's own middleware."""
    return dict(middleware=[Middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)])
