"""The server plumbing without launching the app: the body bound, sessions per client, the client address."""
from __future__ import annotations

import json

import pytest
from gradio.state_holder import StateHolder
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tomviz.ui import server


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


@pytest.fixture
def http():
    app = Starlette(routes=[Route("/gradio_api/queue/join", echo, methods=["POST"]),
                            Route("/gradio_api/upload", echo, methods=["POST"])],
                    middleware=[Middleware(server.BodyLimit, max_bytes=1000)])
    return TestClient(app)


def test_bodies_over_the_bound_get_413_before_the_route_reads_them(http):
    assert http.post("/gradio_api/queue/join", content=b"x" * 1000).json() == {"bytes": 1000}
    refused = http.post("/gradio_api/queue/join", content=b"x" * 1001)
    assert refused.status_code == 413 and "larger than this server accepts" in refused.text
    chunked = http.post("/gradio_api/queue/join", content=(b"x" * 400 for _ in range(3)))  # no Content-Length
    assert chunked.status_code == 413
    assert http.post("/gradio_api/upload", content=b"x" * 5000).status_code == 200  # max_file_size's route


def holder(capacity: int = 6) -> server.ClientStateHolder:
    h = StateHolder()
    h.capacity = capacity
    return server._per_client(h)


def touch(h: server.ClientStateHolder, session: str, client: str) -> None:
    h.record(session, client)
    h.session_data[session] = object()  # a SessionState is not needed for eviction
    h.update(session)


def test_a_client_beyond_its_share_evicts_only_its_own_sessions(monkeypatch):
    monkeypatch.setattr(server, "SESSIONS_PER_CLIENT", 2)
    h = holder()
    touch(h, "keeper", "10.0.0.1")
    for i in range(10):
        touch(h, f"opener-{i}", "10.0.0.2")
    assert list(h.session_data) == ["keeper", "opener-8", "opener-9"]


def test_above_the_global_cap_the_largest_client_loses_its_oldest(monkeypatch):
    monkeypatch.setattr(server, "SESSIONS_PER_CLIENT", 4)
    h = holder(capacity=6)
    for client, count in (("a", 1), ("b", 1), ("c", 4)):
        for i in range(count):
            touch(h, f"{client}{i}", client)
    touch(h, "d0", "d")  # 7 sessions: c (the largest) loses c0
    assert "c0" not in h.session_data and {"a0", "b0", "d0", "c3"} <= set(h.session_data)


def test_client_address_from_the_peer_or_the_configured_header(monkeypatch):
    class Peer:
        host = "10.1.1.1"

    class Req:
        client = Peer()
        headers = {"x-forwarded-for": "1.2.3.4, 5.6.7.8"}

    monkeypatch.setattr(server, "CLIENT_HEADER", "")
    assert server.client_key(Req()) == "10.1.1.1"
    monkeypatch.setattr(server, "CLIENT_HEADER", "x-forwarded-for")
    assert server.client_key(Req()) == "5.6.7.8"  # the entry the proxy added, not one the client wrote
    assert server.client_key(None) == server.UNKNOWN_CLIENT
    assert json.loads(json.dumps(server.app_options()["middleware"][0].kwargs)) == {"max_bytes": server.MAX_BODY_BYTES}
