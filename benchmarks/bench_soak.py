"""Soak test of the public app: many visitors at once, memory and disk stay flat, every answer is their own.

    python benchmarks/bench_soak.py                          # 8 sessions, 400 requests (BENCHMARKS.md)
    python benchmarks/bench_soak.py --sessions 4 --requests 40

Starts `python app.py` as a user does (a child process, its own Gradio cache and temp folder), warms it up
(both embedded models, every image method once, downloads, bad input; then 5 requests per session, all
sessions at once, so that the server's threads and buffers are in use), then runs SESSIONS concurrent
gradio_client sessions that share REQUESTS mixed requests: photos at random methods and ratios, prompts,
layer scrubs, downloads and bad input (a local path as model, an empty prompt, a file that is not an
image). Every answer is checked against the settings of the session that asked (ratio, method, model,
token counts, the downloaded trace, the prompt's own words). The cache and download lifetimes are
shortened (``--ttl``) so that their clean-up shows within the run.

Reports requests per second, p50/p95 latency per kind, the server's RSS after warm-up and at the end,
and the bytes under its temp folders (peak and end).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app_server import ROOT, start_app

sys.path.insert(0, str(ROOT))  # tomviz, for reading the downloaded traces

PHOTOS = [str(ROOT / "assets" / n) for n in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")]
METHODS = ["tome", "pitome", "evit", "random"]
RATIOS = [0.2, 0.35, 0.5, 0.65, 0.8]
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"]
WARMUP_PER_SESSION = 5  # concurrent requests per session before the RSS baseline is read
VISITOR_HEADER = "x-soak-visitor"  # names the visitor: all sessions come from 127.0.0.1 here
KINDS = {"image": 35, "text": 25, "scrub": 20, "download": 12, "bad": 8}  # relative frequency of each request


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def tree_bytes(*roots: Path) -> int:
    total = 0
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(folder, name))
                except OSError:  # removed meanwhile
                    pass
    return total


class Mismatch(AssertionError):
    """An answer that does not belong to the settings of the session that asked."""


@dataclass
class Visitor:
    """One browser-like session (its own gradio_client session and its own last result)."""

    url: str
    seed: int
    bad_file: str
    client: Any = None
    last_image: dict[str, Any] | None = None  # settings and summary of this visitor's last photo
    times: dict[str, list[float]] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from gradio_client import Client

        # each visitor its own client address (the server's per-visitor queue share and session cap)
        self.client = Client(self.url, verbose=False, headers={VISITOR_HEADER: f"visitor-{self.seed}"})
        self.rng = random.Random(self.seed)

    def step(self, kind: str | None = None) -> None:
        kind = kind or self.rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        if kind in ("scrub", "download") and self.last_image is None:
            kind = "image"
        start = time.perf_counter()
        try:
            getattr(self, kind)()
        except Mismatch as err:
            self.mismatches.append(f"{kind}: {err}")
        self.times.setdefault(kind, []).append(time.perf_counter() - start)

    # -- the requests ----------------------------------------------------------------------
    def image(self, method: str | None = None) -> None:
        from gradio_client import handle_file

        photo, ratio = self.rng.choice(PHOTOS), self.rng.choice(RATIOS)
        method = method or self.rng.choice(METHODS)
        summary = self.client.predict(image=handle_file(photo), ratio=ratio, method=method, api_name="/inspect_image")[-2]
        counts = summary["token_counts"]
        expect(summary["model"] == "dinov2-small" and summary["method"] == method and summary["ratio"] == ratio,
               f"asked {method} at {ratio}, got {summary['method']} at {summary['ratio']}")
        expect(counts[0] == 257 and counts[-1] == counts[0] - sum(summary["removed_per_layer"]), f"token counts {counts}")
        expect(abs((counts[0] - counts[-1]) - ratio * 256) <= 13, f"{counts[0] - counts[-1]} removed at ratio {ratio}")
        self.last_image = {"method": method, "ratio": ratio, "counts": counts}

    def text(self) -> None:
        words = self.rng.sample(WORDS, 3)
        ratio = self.rng.choice(RATIOS)
        out = self.client.predict(text=f"visitor {' '.join(words)} asks about token merging today", ratio=ratio,
                                  api_name="/inspect_text")
        highlights, summary = out[0], out[-2]
        tokens = [h["token"] for h in highlights]
        expect(summary["model"] == "minilm" and summary["ratio"] == ratio, f"asked minilm at {ratio}, got {summary['model']}")
        expect(all(f" {w}" in "".join(tokens) for w in words), f"the prompt's words {words} are not in the answer {tokens}")
        expect(len(tokens) == summary["token_counts"][0], "highlighted tokens do not match the token count")

    def scrub(self) -> None:
        from PIL import Image

        layer = self.rng.randint(1, 12)
        overlay, _, heat = self.client.predict(layer=layer, opacity=0.8, api_name="/render_image_layer")
        expect(overlay is not None and heat is not None, "no picture for this session's stored trace")
        expect(min(Image.open(overlay).size) > 50, "overlay too small")

    def download(self) -> None:
        from tomviz.trace import Trace

        files = self.client.predict(layer=6, opacity=0.8, api_name="/image_downloads")
        trace = Trace.load(next(f for f in files if f.endswith(".npz")))
        expect(trace.token_counts() == self.last_image["counts"], "the downloaded trace is not this session's last result")
        expect(trace.meta.get("method") == self.last_image["method"], f"trace of {trace.meta.get('method')}, "
                                                                       f"session's last method {self.last_image['method']}")

    def bad(self) -> None:
        from gradio_client import handle_file
        from gradio_client.exceptions import AppError

        case = self.rng.randrange(3)
        try:
            if case == 0:
                self.client.predict(image=handle_file(PHOTOS[0]), ratio=0.5, model="/etc", api_name="/inspect_image")
            elif case == 1:
                self.client.predict(text="  ", ratio=0.5, api_name="/inspect_text")
            else:
                self.client.predict(image=handle_file(self.bad_file), ratio=0.5, api_name="/inspect_image")
        except AppError as err:
            expected = ("TOMVIZ_LOCAL_MODELS", "empty", "not an image format")[case]
            expect(expected in str(err), f"bad input {case}: unexpected message {err}")
            return
        raise Mismatch(f"bad input {case} was accepted")


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Mismatch(message)


def soak(sessions: int = 8, requests: int = 400, ttl_s: int = 60, seed: int = 0,
         warmup_per_session: int = WARMUP_PER_SESSION) -> dict[str, Any]:
    """Run the soak against a freshly started app; returns the figures (see the module docstring)."""
    work = Path(tempfile.mkdtemp(prefix="tomviz-soak-"))
    gradio_tmp, tmp = work / "gradio", work / "tmp"
    gradio_tmp.mkdir()
    tmp.mkdir()
    bad_file = work / "notes.png"
    bad_file.write_bytes(b"these are notes, not a picture")
    env = {"GRADIO_TEMP_DIR": str(gradio_tmp), "TMPDIR": str(tmp), "TOMVIZ_CACHE_TTL_S": str(ttl_s),
           "TOMVIZ_DOWNLOAD_TTL_S": str(ttl_s), "TOMVIZ_CLIENT_HEADER": VISITOR_HEADER}
    proc, url = start_app(env)
    disk_samples: list[int] = []
    rss_samples: list[int] = []
    stop = threading.Event()

    def watch_disk() -> None:
        while not stop.is_set():
            disk_samples.append(tree_bytes(gradio_tmp, tmp))
            rss_samples.append(rss_bytes(proc.pid))
            stop.wait(2.0)

    try:
        warm = Visitor(url, seed=seed, bad_file=str(bad_file))
        for method in METHODS:
            warm.image(method)
        for kind in ("text", "scrub", "download", "bad", "bad", "bad"):
            warm.step(kind)
        visitors = [Visitor(url, seed=seed + 1 + i, bad_file=str(bad_file)) for i in range(sessions)]
        errors: list[str] = []
        concurrently(visitors, [warmup_per_session] * sessions, errors)  # the server's threads and buffers at full use
        for v in visitors:
            v.times.clear()
        rss_warm, disk_warm = rss_bytes(proc.pid), tree_bytes(gradio_tmp, tmp)
        watcher = threading.Thread(target=watch_disk, daemon=True)
        watcher.start()
        start = time.perf_counter()
        concurrently(visitors, [requests // sessions + (1 if i < requests % sessions else 0) for i in range(sessions)], errors)
        elapsed = time.perf_counter() - start
        rss_end, disk_end = rss_bytes(proc.pid), tree_bytes(gradio_tmp, tmp)
        stop.set()
        watcher.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    times: dict[str, list[float]] = {}
    for v in visitors:
        for kind, values in v.times.items():
            times.setdefault(kind, []).extend(values)
    every = sorted(t for values in times.values() for t in values)
    return {
        "sessions": sessions, "requests": sum(len(v) for v in times.values()), "seconds": elapsed,
        "rps": len(every) / elapsed, "latency": {kind: quantiles(values) for kind, values in [("all", every), *times.items()]},
        "rss_warm": rss_warm, "rss_end": rss_end, "rss_growth": rss_end / rss_warm - 1,
        "rss_quarters": [rss_samples[min(len(rss_samples) - 1, len(rss_samples) * q // 4)] for q in (1, 2, 3)] + [rss_end],
        "disk_warm": disk_warm, "disk_peak": max(disk_samples + [disk_end]), "disk_end": disk_end, "ttl_s": ttl_s,
        "mismatches": [m for v in visitors for m in v.mismatches], "errors": errors,
    }


def concurrently(visitors: list[Visitor], counts: list[int], errors: list[str]) -> None:
    """Each visitor makes its count of random requests, all visitors at once (one thread each)."""
    def run(visitor: Visitor, n: int) -> None:
        for _ in range(n):
            try:
                visitor.step()
            except Exception as err:  # noqa: BLE001 - an unexpected failure: reported, not fatal
                errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=run, args=(v, n)) for v, n in zip(visitors, counts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(ordered), "p50": statistics.median(ordered), "p95": ordered[int(0.95 * (len(ordered) - 1))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--ttl", type=int, default=60, help="lifetime of cached files and downloads (s)")
    args = parser.parse_args()
    r = soak(args.sessions, args.requests, args.ttl)
    mb = 1024 * 1024
    print(f"{r['requests']} requests from {r['sessions']} sessions in {r['seconds']:.1f} s: {r['rps']:.2f} requests/s; "
          f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    print("| kind | n | p50 (s) | p95 (s) |\n|---|---|---|---|")
    for kind, q in r["latency"].items():
        print(f"| {kind} | {q['n']} | {q['p50']:.3f} | {q['p95']:.3f} |")
    print(f"server RSS: {r['rss_warm'] / mb:.0f} MB after warm-up, {r['rss_end'] / mb:.0f} MB at the end "
          f"({100 * r['rss_growth']:+.1f} %); after each quarter of the run: "
          f"{', '.join(f'{x / mb:.0f}' for x in r['rss_quarters'])} MB")
    print(f"temp files (Gradio cache + downloads, lifetime {r['ttl_s']} s): {r['disk_warm'] / mb:.1f} MB after warm-up, "
          f"peak {r['disk_peak'] / mb:.1f} MB, end {r['disk_end'] / mb:.1f} MB")
    print(f"answers not matching their session: {len(r['mismatches'])}; unexpected errors: {len(r['errors'])}")
    for line in (r["mismatches"] + r["errors"])[:10]:
        print("  ", line)


if __name__ == "__main__":
    main()
