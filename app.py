"""tomviz web app: wiring only. Tabs live in ``tomviz/ui/``; pictures in ``tomviz/render/``.

Run ``python app.py`` (port 7860, or $PORT / $GRADIO_SERVER_PORT). Models load on first use.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

if __name__ == "__main__" and sys.platform.startswith("linux") and "MALLOC_ARENA_MAX" not in os.environ:
    # glibc reads MALLOC_ARENA_MAX at start only: restart once with it set, before torch and Gradio start
    # threads (see configure_memory; the Dockerfile sets it itself)
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_ARENA_MAX": "2"})

import gradio as gr

from tomviz.ui.bench_tab import build_bench_tab
from tomviz.ui.compare_tab import build_compare_tab
from tomviz.ui.image_tab import build_image_tab
from tomviz.ui.scores_tab import build_scores_tab
from tomviz.ui.server import app_options, install
from tomviz.ui.common import APP_CSS
from tomviz.ui.share import selected_tab
from tomviz.ui.text_tab import build_text_tab
from tomviz.ui.video_question import build_video_page
from tomviz.ui.vlm_tab import build_vlm_tab

TITLE = "tomviz — token merging, layer by layer"
INTRO = (
    "Upload a photo or type a prompt, release the **merge ratio** slider to run the model once, then move the "
    "**layer** slider to watch tokens merge. Default models are embedded (DINOv2-S/14, all-MiniLM-L6-v2) and "
    "run offline; any Hugging Face id of a supported architecture can be typed in the model box."
)

# ---------------------------------------------------------------------------------------
# EXTRA TABS — other engineers add tabs here: (tab title, builder). A builder lays out its
# components and wires its events inside the current gr.Tab (see tomviz/ui/image_tab.py).
# ---------------------------------------------------------------------------------------
EXTRA_TABS: list[tuple[str, Callable[[], None]]] = [
    ("Scores", build_scores_tab), ("Compare / Sweep", build_compare_tab), ("Benchmark", build_bench_tab),
    ("Image + question", build_vlm_tab),
]

# Bounds of the public server (README, "The public server's bounds"); the tabs' own bounds are in tomviz/ui/common.py.
QUEUE_MAX_SIZE = 32  # waiting requests beyond this are refused ("queue full")
DEFAULT_CONCURRENCY = 2  # per event; one forward: concurrency_id="model", limit 1; long model work: "heavy", limit 1
MAX_FILE_SIZE_MB = 25  # uploads above this are refused before they are written (a 50-megapixel phone JPEG fits)
MAX_SESSIONS = 200  # visitors whose state is kept at once (least recently active dropped first)
MEMORY_TRIM_S = float(os.environ.get("TOMVIZ_MEMORY_TRIM_S", 5.0))  # free heap pages go back to the system this
# often (configure_memory); 0 = never
# Files Gradio cached for this app (uploads, pictures sent back) are deleted once older than this; checked a third as often.
CACHE_TTL_S = int(os.environ.get("TOMVIZ_CACHE_TTL_S", 900))


def build_app() -> gr.Blocks:
    with gr.Blocks(title=TITLE, delete_cache=(max(1, CACHE_TTL_S // 3), CACHE_TTL_S)) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tabs() as tabs:
            with gr.Tab("Image", id="image"):
                build_image_tab(demo)
            with gr.Tab("Text", id="text"):
                build_text_tab(demo)
            for title, builder in EXTRA_TABS:
                with gr.Tab(title):
                    builder()
            with gr.Tab("Video", id="video"):
                build_video_page(demo)  # a Video-tab link opens its clip and settings on page load
        demo.load(selected_tab, None, tabs, queue=False, show_progress="hidden")  # a shared link names its tab
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=DEFAULT_CONCURRENCY)
    return install(demo)  # heavy events budgeted, a queue share per visitor (tomviz/ui/server.py)


demo = build_app()


def configure_torch_threads() -> None:
    """CPU threads per forward: $TOMVIZ_TORCH_THREADS, default 1. On a shared or busy CPU (Spaces'
    CPU tier, a laptop running other work) one thread per request is several times faster than
    threads that spin waiting for each other; on an idle machine 2 threads are ~1.3x faster."""
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("TOMVIZ_TORCH_THREADS", "1"))))


def launch_options() -> dict:
    """What ``demo.launch`` gets besides the address (the tests launch with the same options)."""
    return dict(max_file_size=f"{MAX_FILE_SIZE_MB}mb", state_session_capacity=MAX_SESSIONS, show_error=True,
                run_history=False,  # no per-run records, no Hub bucket a visitor could connect
                app_kwargs=app_options(),  # request bodies bounded (tomviz/ui/server.py)
                theme=gr.themes.Soft(), css=APP_CSS)


def configure_memory() -> None:
    """Keep the server's memory flat under many visitors (glibc only; elsewhere nothing to do).

    Gradio runs handlers in a pool of worker threads, and glibc gives each thread that allocates its own
    malloc arena; the tensors freed there stay mapped, so the RSS creeps up with every thread that has run a
    model (bench_soak.py: +22 % over 400 requests). Two arenas, and returning free pages to the system every
    few seconds (``malloc_trim``), keep it flat. ``MALLOC_ARENA_MAX`` in the environment takes precedence and
    works better (the Dockerfile sets it; ``python app.py`` restarts itself once with it set): glibc reads it at start, before the threads that importing torch and
    Gradio start have made arenas (bench_soak.py, 2026-12-02: +3.2 % with it, +11.6 % with only this call)."""
    import ctypes
    import ctypes.util
    import threading
    import time

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return  # not glibc
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(-8, 2)  # M_ARENA_MAX

    def trim_forever() -> None:
        while True:
            time.sleep(MEMORY_TRIM_S)
            trim(0)

    if MEMORY_TRIM_S > 0:
        threading.Thread(target=trim_forever, name="malloc-trim", daemon=True).start()


if __name__ == "__main__":
    configure_torch_threads()
    configure_memory()
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(os.environ.get("PORT", os.environ.get("GRADIO_SERVER_PORT", 7860))),
        **launch_options(),
    )
