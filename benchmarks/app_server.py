"""Start the app as a user starts it (`python app.py` in a child process) on a free local port."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(env: dict[str, str] | None = None, timeout_s: float = 180) -> tuple[subprocess.Popen, str]:
    """``(process, url)`` once the app accepts connections; ``env`` is added to this process's environment."""
    port = free_port()
    full_env = {**os.environ, **(env or {}), "PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=full_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before it served")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the app did not start within {timeout_s:.0f} s")


def quantiles(times: list[float]) -> dict[str, float]:
    """p50, p90, min and n of ``times`` (seconds)."""
    import statistics

    ordered = sorted(times)
    return {"p50": statistics.median(ordered), "p90": ordered[int(0.9 * (len(ordered) - 1))], "min": ordered[0],
            "n": len(ordered)}


def measure_app(url: str | None, measure) -> dict[str, dict[str, float]]:
    """``measure(url)`` against the app at ``url`` (None: start one, stopped afterwards); prints the load
    average before and after, and returns what ``measure`` returned."""
    load_before = os.getloadavg()
    proc, url = (None, url) if url else start_app()
    try:
        results = measure(url)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    load = os.getloadavg()
    print(f"load average (1 min / 5 min) before: {load_before[0]:.2f} / {load_before[1]:.2f}, after: "
          f"{load[0]:.2f} / {load[1]:.2f}; cores: {os.cpu_count()}")
    return results


def print_latency_table(results: dict[str, dict[str, float]], heading: str = "step") -> None:
    print(f"| {heading} | p50 (s) | p90 (s) | min (s) | n |\n|---|---|---|---|---|")
    for name, q in results.items():
        print(f"| {name} | {q['p50']:.3f} | {q['p90']:.3f} | {q['min']:.3f} | {q['n']} |")
