"""The public server's trust boundary and bounds, through gradio_client against the launched app."""
from __future__ import annotations

import ast
import re
import os
import sys
import uuid
from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

import app
from tomviz.models.hub import refusal
from tomviz.ui.common import MAX_PROMPT_CHARS, SESSION_TTL_S
from tests import tiny

ROOT = Path(__file__).resolve().parents[2]
CAT = str(ROOT / "assets" / "chelsea.png")
SITE_PACKAGES = next(p for p in sys.path if p.endswith("site-packages"))
# existing and missing paths, absolute, relative and home-relative: all get the same message
PATHS = ["/etc", "/root", SITE_PACKAGES, f"/nonexistent-{uuid.uuid4().hex[:8]}", "../../etc", "./assets", "~", "~/x",
         str(ROOT / "assets" / ".." / "tomviz")]


def unescape_markdown(text: str) -> str:
    """The text a Markdown reader sees (the CLIP section escapes what it echoes: ``escape_markdown``)."""
    return re.sub(r"\\(.)", r"\1", re.sub(r"&#(\d+);", lambda m: chr(int(m.group(1))), text))


def _endpoint_calls(client, model: str):
    """Every endpoint that takes a model name, called with ``model``: (name, the error message or the HBI note)."""
    image = handle_file(CAT)
    calls = {
        "/inspect_image": dict(image=image, model=model),
        "/inspect_text": dict(text="hello world", model=model),
        "/score_banzhaf": dict(model=model, image=image, text="hello world", samples=64),
        "/compare": dict(modality="image", image=image, prompt="hello world", model=model),
        "/sweep": dict(modality="image", image=image, prompt="hello world", model=model, methods=["tome"], ratios="0.5"),
    }
    for api_name, kwargs in calls.items():
        with pytest.raises(AppError) as info:
            client.predict(api_name=api_name, **kwargs)
        yield api_name, str(info.value)
    # the CLIP box: HBI reports load errors in its summary instead of raising (the rest of the tab keeps working)
    out = client.predict(model=model, image=image, text="a cat", samples=64, api_name="/score_hbi")
    yield "/score_hbi", unescape_markdown(out[-1])


def test_every_endpoint_refuses_paths_with_one_message(client):
    for path in PATHS:
        expected = refusal(path)
        for api_name, message in _endpoint_calls(client, path):
            assert expected in message, f"{api_name} with {path!r}: {message}"
    # the message depends on the name typed, never on what the server's disk holds
    assert refusal("/etc").replace("/etc", "X") == refusal("/nonexistent").replace("/nonexistent", "X")
    assert "TOMVIZ_LOCAL_MODELS" in refusal("/etc")


def test_allow_listed_folders_load_and_nothing_beside_them(client, tmp_path, monkeypatch):
    allowed, outside = tmp_path / "models", tmp_path / "private"
    for folder in (allowed / "tiny-vit", outside / "tiny-vit"):
        tiny.vit(num_hidden_layers=2, num_attention_heads=2).save_pretrained(folder)
    (allowed / "escape").symlink_to(outside / "tiny-vit", target_is_directory=True)
    monkeypatch.setenv("TOMVIZ_LOCAL_MODELS", f"/nowhere{os.pathsep}{allowed}")  # the in-process server reads it per call
    summary = client.predict(image=handle_file(CAT), ratio=0.5, model=str(allowed / "tiny-vit"), api_name="/inspect_image")[-2]
    assert summary["num_layers"] == 2 and summary["token_counts"][0] == 17
    for path in (outside / "tiny-vit", allowed / ".." / "private" / "tiny-vit", allowed / "escape"):
        with pytest.raises(AppError, match="TOMVIZ_LOCAL_MODELS"):
            client.predict(image=handle_file(CAT), ratio=0.5, model=str(path), api_name="/inspect_image")


def test_ui_code_loads_models_only_as_untrusted():
    """Every ``load(...)`` call in tomviz/ui and the app's service layer (tomviz/analysis.py, score_analysis.py) passes
    ``untrusted=True`` (names there come from the web)."""
    calls = []
    for path in [*(ROOT / "tomviz" / "ui").glob("*.py"), ROOT / "tomviz" / "analysis.py", ROOT / "tomviz" / "score_analysis.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "load":
                owner = getattr(node.func, "value", None)
                if getattr(owner, "id", None) == "demo":  # demo.load is Gradio's page-load event
                    continue
                flag = {k.arg: k.value for k in node.keywords}.get("untrusted")
                calls.append((path.name, node.lineno, isinstance(flag, ast.Constant) and flag.value is True))
    assert len(calls) >= 4
    assert all(ok for _, _, ok in calls), [c for c in calls if not c[2]]


def test_ui_state_is_per_session_with_a_lifetime():
    """No tab keeps a visitor's data in a gr.State without the session lifetime (session_state())."""
    bare = []
    for path in (ROOT / "tomviz" / "ui").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "State" and path.name != "common.py":
                bare.append((path.name, node.lineno))
    assert not bare, f"gr.State made outside session_state(): {bare}"
    import gradio as gr

    with gr.Blocks() as demo:
        for builder in [*(builder for _, builder in app.EXTRA_TABS), app.build_video_page]:
            builder()
    states = [b for b in demo.blocks.values() if isinstance(b, gr.State)]
    assert states and all(s.time_to_live == SESSION_TTL_S for s in states)


def test_upload_above_the_size_limit_is_refused(client, app_url, tmp_path):
    import httpx

    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0" + os.urandom(app.MAX_FILE_SIZE_MB * 1024 * 1024 + 1024))
    with pytest.raises(Exception, match="(?i)exceeds the maximum file size"):  # gradio_client checks first
        client.predict(image=handle_file(str(big)), ratio=0.5, api_name="/inspect_image")
    with open(big, "rb") as f:  # a caller that skips the client's check: the server refuses while receiving
        answer = httpx.post(f"{app_url}gradio_api/upload", files={"files": ("big.jpg", f, "image/jpeg")}, timeout=60)
    assert answer.status_code == 413 and "maximum allowed size" in answer.text
    with open(CAT, "rb") as f:
        assert httpx.post(f"{app_url}gradio_api/upload", files={"files": ("cat.png", f, "image/png")}, timeout=60).status_code == 200
    assert client.predict(text="still serving", ratio=0.5, api_name="/inspect_text")[-2]["model"] == "minilm"


def test_server_files_cannot_be_named_as_inputs(client):
    for path in ("/etc/passwd", str(ROOT / "app.py")):
        with pytest.raises(AppError):
            client.predict(image={"path": path, "meta": {"_type": "gradio.FileData"}}, ratio=0.5, api_name="/inspect_image")


def test_text_bounds_hold_for_api_callers(client):
    with pytest.raises(AppError, match=f"at most {MAX_PROMPT_CHARS}"):
        client.predict(text="a" * (MAX_PROMPT_CHARS + 1), ratio=0.5, api_name="/inspect_text")
    with pytest.raises(AppError, match=f"at most {MAX_PROMPT_CHARS}"):
        client.predict(model="m" * (MAX_PROMPT_CHARS + 1), image=handle_file(CAT), text="a cat", api_name="/score_hbi")
    with pytest.raises(AppError, match="(?i)maximum"):
        client.predict(model="dinov2-small", image=handle_file(CAT), text="", samples=10**9, api_name="/score_banzhaf")
    with pytest.raises(AppError, match="(?i)maximum"):
        client.predict(model="dinov2-small", image=handle_file(CAT), text="", seed=2**40, api_name="/score_banzhaf")
