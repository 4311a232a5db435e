"""Bounds that hold before decoding, for time and per visitor, probed through the launched app
(``gradio_client`` and raw ``httpx``) as a hostile visitor would: each class answers a clear message within
seconds, with the server's memory (the app runs in this process) growing by less than 250 MB per request."""
from __future__ import annotations

import base64
import json
import struct
import threading
import time
import uuid
import zlib
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tomviz.inputs.limits import MAX_PIXELS
from tomviz.ui import server

pytestmark = pytest.mark.slow  # launches the app

ROOT = Path(__file__).resolve().parents[2]
CAT = str(ROOT / "assets" / "chelsea.png")
MAX_GROWTH = 250 * 2**20
SERVER_PATH_HINTS = ("/tmp", "gradio/", "Could not preprocess", "Traceback", "UnidentifiedImageError", "Original error")


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def bomb_png(path: Path, side: int = 12_000) -> Path:
    """A grey PNG declaring ``side`` × ``side`` pixels (144 megapixels at 12 000), ~140 KB on disk; written row
    by row so that making it costs no memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate, row, parts = zlib.compressobj(9), b"\x00" * (side + 1), []
    for _ in range(side):
        parts.append(deflate.compress(row))
    parts.append(deflate.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


def assert_clean(message: str) -> None:
    for hint in SERVER_PATH_HINTS:
        assert hint not in message, f"{hint!r} shown to the visitor: {message[:300]}"


IMAGE_CALLS = {  # every endpoint that takes an image, with the other arguments it needs
    "/inspect_image": {},
    "/score_banzhaf": dict(model="dinov2-small", text="", samples=64),
    "/score_hbi": dict(model="dinov2-small", text="a cat", samples=64),
    "/compare": dict(modality="image", prompt=""),
    "/sweep": dict(modality="image", prompt="", methods=["tome"], ratios="0.5"),
    "/ask_vlm": dict(question="what is this?"),
}


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")


def test_pixel_bombs_are_refused_from_the_header_on_every_tab(client, bomb):
    assert bomb.stat().st_size < 400_000
    for api_name, kwargs in IMAGE_CALLS.items():
        before, start = rss(), time.monotonic()
        with pytest.raises(AppError) as info:
            client.predict(image=handle_file(str(bomb)), api_name=api_name, **kwargs)
        message = str(info.value)
        assert "megapixels" in message and f"{MAX_PIXELS / 1e6:.0f}" in message, (api_name, message)
        assert_clean(message)
        assert time.monotonic() - start < 10, api_name
        assert rss() - before < MAX_GROWTH, (api_name, (rss() - before) / 2**20)


def test_files_that_are_not_images_get_a_message_without_server_paths(client, tmp_path):
    page = tmp_path / "page.png"
    page.write_text("<html>not an image</html>")
    for api_name, kwargs in IMAGE_CALLS.items():
        with pytest.raises(AppError) as info:
            client.predict(image=handle_file(str(page)), api_name=api_name, **kwargs)
        assert "not an image format" in str(info.value), (api_name, str(info.value))
        assert_clean(str(info.value))


def _upload(app_url: str, path: str) -> str:
    with open(path, "rb") as f:
        answer = httpx.post(f"{app_url}gradio_api/upload", files={"files": (Path(path).name, f, "image/png")}, timeout=60)
    answer.raise_for_status()
    return answer.json()[0]


def test_inline_data_urls_are_bounded_and_header_checked(client, app_url, bomb):
    def inline(data: bytes) -> dict:  # Gradio decodes a FileData's data: URL when it has no path
        url = "data:image/png;base64," + base64.b64encode(data).decode()
        return {"path": None, "url": url, "meta": {"_type": "gradio.FileData"}}

    summary = client.predict(image=inline(Path(CAT).read_bytes()), api_name="/inspect_image")[-2]  # a fair one works
    assert summary["token_counts"][0] == 257
    small_bomb = inline(bomb.read_bytes())
    before = rss()
    with pytest.raises(AppError, match="megapixels") as info:  # a small bomb inside the request
        client.predict(image=small_bomb, api_name="/inspect_image")
    assert_clean(str(info.value))
    assert rss() - before < MAX_GROWTH
    big = json.dumps({"data": [{"path": None, "url": "data:image/png;base64," + "A" * (75 * 2**20),
                                "meta": {"_type": "gradio.FileData"}}], "fn_index": 0,
                      "session_hash": uuid.uuid4().hex}).encode()
    for route in ("gradio_api/queue/join", "gradio_api/call/inspect_image", "gradio_api/run/predict"):
        before = rss()
        answer = httpx.post(app_url + route, content=big, headers={"content-type": "application/json"}, timeout=60)
        assert answer.status_code == 413 and "larger than this server accepts" in answer.text, (route, answer.status_code)
        assert rss() - before < MAX_GROWTH, route


def test_bodies_without_a_length_are_bounded_while_received(app_url):
    def chunks():
        for _ in range(server.MAX_BODY_BYTES // 2**20 + 2):
            yield b" " * 2**20

    answer = httpx.post(app_url + "gradio_api/queue/join", content=chunks(), headers={"content-type": "application/json"},
                        timeout=60)
    assert answer.status_code == 413
    assert httpx.get(app_url + "gradio_api/info", timeout=30).status_code == 200  # still serving


def test_a_visitor_cannot_fill_the_queue_for_others(client, app_url, monkeypatch):
    monkeypatch.setattr(server, "CLIENT_HEADER", "x-test-visitor")
    monkeypatch.setattr(server, "QUEUE_PER_VISITOR", 2)
    greedy = Client(app_url, verbose=False, headers={"x-test-visitor": "greedy"})
    other = Client(app_url, verbose=False, headers={"x-test-visitor": "other"})
    jobs = [greedy.submit(model="dinov2-small", image=handle_file(CAT), text="", samples=64, api_name="/score_banzhaf")
            for _ in range(4)]
    time.sleep(1.0)
    assert other.predict(text="my turn", ratio=0.5, api_name="/inspect_text")[-2]["model"] == "minilm"
    refused = 0
    for job in jobs:
        try:
            job.result(timeout=120)
        except Exception as err:  # noqa: BLE001 - the refused ones
            refused += 1
            assert "requests waiting or running" in str(err) or "Queue" in str(err), str(err)
    assert refused >= 1


def test_heavy_work_stops_at_its_budget_and_light_requests_pass_meanwhile(client, monkeypatch):
    monkeypatch.setattr(server, "HEAVY_BUDGET_S", 8.0)
    outcome: dict = {}

    def heavy():
        start = time.monotonic()
        try:  # the heaviest Banzhaf this server allows: every token a player, all samples, from layer 1
            client.predict(model="dinov2-small", image=handle_file(CAT), text="", ratio=0.0, layer=1, samples=4096,
                           api_name="/score_banzhaf")
            outcome["error"] = None
        except AppError as err:
            outcome["error"] = str(err)
        outcome["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=heavy)
    thread.start()
    time.sleep(2.0)
    start = time.monotonic()
    assert client.predict(text="light while heavy", ratio=0.5, api_name="/inspect_text")[-2]["model"] == "minilm"
    assert time.monotonic() - start < 30
    thread.join(120)
    assert outcome["error"] and "budget of 8 s" in outcome["error"], outcome
    assert outcome["seconds"] < 30


def test_heavy_work_stops_when_its_visitor_leaves(client, app_url, monkeypatch):
    monkeypatch.setattr(server, "HEAVY_BUDGET_S", 600.0)
    config = client.config
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "score_banzhaf")
    uploaded = _upload(app_url, CAT)
    image = {"path": uploaded, "meta": {"_type": "gradio.FileData"}, "orig_name": "cat.png"}
    session = uuid.uuid4().hex
    data = ["dinov2-small", image, "", 0.0, 1, 4096, False, 0, 8]
    with httpx.Client(base_url=app_url, timeout=60) as http:
        joined = http.post("gradio_api/queue/join", json=dict(data=data, fn_index=fn_index, session_hash=session,
                                                               trigger_id=None, event_data=None))
        assert joined.status_code == 200, joined.text
        with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if "process_starts" in line:
                    break
            time.sleep(1.0)
        # the stream is closed: the visitor left
    start = time.monotonic()
    out = client.predict(model="dinov2-small", image=handle_file(CAT), text="", ratio=0.9, samples=64,
                         api_name="/score_banzhaf")
    assert "players" in out[-2]
    assert time.monotonic() - start < 30  # the slot was freed, not held for minutes


def test_one_visitor_cannot_evict_the_others_sessions(client, app_url, monkeypatch):
    monkeypatch.setattr(server, "CLIENT_HEADER", "x-test-visitor")
    monkeypatch.setattr(server, "SESSIONS_PER_CLIENT", 3)
    keeper = Client(app_url, verbose=False, headers={"x-test-visitor": "keeper"})
    keeper.predict(text="keep my result", ratio=0.5, api_name="/inspect_text")
    for i in range(12):  # a visitor opening many sessions
        Client(app_url, verbose=False, headers={"x-test-visitor": "opener"}).predict(
            text=f"session {i}", ratio=0.5, api_name="/inspect_text")
    from app import demo

    holder = demo.state_holder
    owners = [holder.clients.get(s) for s in holder.session_data]
    assert owners.count("opener") <= 3
    assert keeper.session_hash in holder.session_data


def test_model_names_with_control_characters_and_markdown_get_clear_messages(client):
    for api_name, kwargs in (("/inspect_image", dict(image=handle_file(CAT))), ("/inspect_text", dict(text="hi"))):
        with pytest.raises(AppError, match="control characters") as info:
            client.predict(model="owner/na\x00me", api_name=api_name, **kwargs)
        assert "embedded null byte" not in str(info.value)
    summary = client.predict(model="x/y\x00<img src=x onerror=alert(1)>**[link](http://e.vil)**", image=handle_file(CAT),
                             text="a cat", samples=64, api_name="/score_hbi")[-1]
    assert "control characters" in summary
    assert "<img" not in summary and "[link](" not in summary and "**[" not in summary


def test_results_uploads_that_decode_large_are_refused_through_the_app(client, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bomb = tmp_path / "results.parquet"  # 100 000 rows repeating a 20 000-character method: 2 GB decoded
    pq.write_table(pa.table({"model": ["m"] * 100_000, "method": ["x" * 20_000] * 100_000}), bomb, compression="zstd")
    assert bomb.stat().st_size < 1_000_000
    before, start = rss(), time.monotonic()
    with pytest.raises(AppError, match="20000 characters") as info:
        client.predict(file=handle_file(str(bomb)), api_name="/open_bench")
    assert_clean(str(info.value))
    assert time.monotonic() - start < 10 and rss() - before < MAX_GROWTH


def test_bad_share_link_parameters_show_the_visitor_a_notice(app_url):
    import shutil

    from tests.app.test_browser import CHROMIUM, LAUNCH_ARGS

    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url + "?tab=image&ratio=7&layer=abc")
            toast = page.locator("[data-testid='toast-body'], .toast-body").first
            toast.wait_for(timeout=120_000)
            text = " ".join(page.locator("[data-testid='toast-body'], .toast-body").all_inner_texts())
            assert "ratio='7' was ignored" in text and "layer='abc' was ignored" in text
        finally:
            browser.close()
