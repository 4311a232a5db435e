"""App latency as a visitor sees it: Debian's chromium (headless, Playwright) against the app.

    python benchmarks/bench_app_browser.py --rounds 5

The app is launched in this process, with `python app.py`'s options (launch_options, torch threads, memory
settings), so that the bench can see the server's grids of ratios (tomviz/ratio_grid.py) and its RSS; chromium
runs in its own processes. The Image tab opens on an inspected example photo. Then:
* upload → grid ready: a photo is uploaded (`set_input_files`) and the time until the page's Image-tab grid for
  it holds every ratio (0, 0.05, …, 0.95) is taken on the server;
* RSS per session: the server's RSS (``/proc/self/status``, after ``malloc_trim``) before a fresh page is opened
  and once both of its grids (Image and Text tab) are full, and the bytes the grids' traces hold;
* then, for each step, the time from the input event in the page to the moment its pictures have loaded
  (performance.now() in the page):
  - layer change: the layer slider moves (`input`) → every picture it changes has loaded (overlay, CLS attention,
    cluster map: ``LAYER_PICTURES``);
  - ratio change from memory: the ratio slider is released at a grid ratio → every picture it changes has loaded
    (those three, the strip of every layer and the token-count and GFLOPs charts: ``RATIO_PICTURES``);
  - ratio change off the grid: released at a ratio the grid lacks (0.32, 0.42, …): the model runs.
The targets (issue 23): ratio change from memory p50 ≤ 1.5 × layer change p50.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path

from app_server import free_port, print_latency_table, quantiles

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHROMIUM = os.environ.get("TOMVIZ_CHROMIUM", "/usr/bin/chromium")
RATIOS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]  # on the grid
OFF_GRID = [0.32, 0.42, 0.52, 0.62, 0.72]  # not on it: the model runs
TIMEOUT_MS = 180_000
LAYER_PICTURES = ["#overlay img", "#attention img", "#cluster-map img"]  # what a layer change redraws
RATIO_STEP, LAYER_STEP = "ratio change from memory → its 6 pictures loaded", "layer change → its 3 pictures loaded"
RATIO_PICTURES = [*LAYER_PICTURES, "#layer-strip img", "#image-token-count img", "#image-gflops img"]  # a ratio change

# Set a range input to ``value``, fire ``events``, and resolve with the ms until every image in ``selectors``
# shows a new src that has finished loading.
STEP_JS = """
async ([label, value, events, selectors, timeout]) => {
  const slider = document.querySelector(`input[type=range][aria-label="range slider for ${label}"]`);
  const before = selectors.map(s => document.querySelector(s)?.getAttribute("src"));
  const start = performance.now();
  slider.value = String(value);
  for (const name of events) slider.dispatchEvent(new Event(name, {bubbles: true}));
  const loaded = (s, old) => new Promise((resolve, reject) => {
    const tick = () => {
      const img = document.querySelector(s);
      if (img && img.getAttribute("src") !== old && img.complete && img.naturalWidth > 0) return resolve();
      if (performance.now() - start > timeout) return reject(new Error(`${s} did not change`));
      requestAnimationFrame(tick);
    };
    tick();
  });
  await Promise.all(selectors.map((s, i) => loaded(s, before[i])));
  return performance.now() - start;
}
"""


def rss_mb() -> float:
    """This process's resident memory in MB, after free heap pages went back to the system (glibc)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_for_grids(known: set[str], tabs: tuple[str, ...], key_part: str = "", timeout_s: float = 600) -> dict:
    """The new visitors' grids (not in ``known``) of ``tabs`` whose input contains ``key_part``, once full."""
    from tomviz.ratio_grid import GRIDS

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = {}
        for visitor in set(GRIDS.visitors()) - known:
            grid = GRIDS.grid(visitor)
            tab = visitor.rsplit(":", 1)[-1]
            if grid is not None and tab in tabs and key_part in grid.key[0] and grid.ready:
                found[visitor] = grid
        if {v.rsplit(":", 1)[-1] for v in found} == set(tabs):
            return found
        time.sleep(0.05)
    raise RuntimeError(f"the grids of {tabs} were not ready within {timeout_s} s")


def measure(url: str, rounds: int) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    from playwright.sync_api import sync_playwright

    from tomviz.ratio_grid import GRIDS

    ratio_ms, off_ms, layer_ms, facts = [], [], [], {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            warm = browser.new_page(viewport={"width": 1400, "height": 1000})  # models loaded, examples computed
            warm.goto(url)
            warm.wait_for_selector("#layer-strip img", timeout=TIMEOUT_MS)
            wait_for_grids(set(), ("image", "text"))
            warm.close()
            known, before = set(GRIDS.visitors()), rss_mb()
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#overlay img", timeout=TIMEOUT_MS)  # the example, inspected on page load
            page.wait_for_selector("#layer-strip img", timeout=TIMEOUT_MS)
            grids = wait_for_grids(known, ("image", "text"))
            facts["RSS per session with full grids (Image + Text), MB"] = rss_mb() - before
            facts["grid traces of that session, MB"] = sum(GRIDS.nbytes(v) for v in grids) / 2**20

            known = set(GRIDS.visitors()) - {v for v in grids if v.endswith(":image")}
            start = time.monotonic()
            page.locator("input[type=file]").first.set_input_files(str(ROOT / "assets" / "coffee.png"))
            wait_for_grids(known, ("image",), key_part="coffee")
            facts["upload → grid ready, s"] = time.monotonic() - start
            page.wait_for_timeout(1000)
            step = lambda *args: page.evaluate(STEP_JS, [*args, TIMEOUT_MS])  # noqa: E731
            step("Merge ratio", 0.45, ["input", "change", "pointerup"], RATIO_PICTURES)  # warm-up
            for _ in range(rounds):
                for ratio in RATIOS:
                    ratio_ms.append(step("Merge ratio", ratio, ["input", "change", "pointerup"], RATIO_PICTURES))
                    page.wait_for_timeout(300)  # the follow-up steps (lineage, link) settle
                    for layer in (2, 7, 12):
                        layer_ms.append(step("Layer", layer, ["input"], LAYER_PICTURES))
                        page.wait_for_timeout(100)
            for ratio in OFF_GRID:
                off_ms.append(step("Merge ratio", ratio, ["input", "change", "pointerup"], RATIO_PICTURES))
                page.wait_for_timeout(300)
        finally:
            browser.close()
    return {RATIO_STEP: quantiles([t / 1e3 for t in ratio_ms]), LAYER_STEP: quantiles([t / 1e3 for t in layer_ms]),
            "ratio change off the grid (model runs) → its 6 pictures loaded": quantiles([t / 1e3 for t in off_ms])}, facts


def serve_and_measure(rounds: int) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Launch the app here as ``python app.py`` does, measure, close it; prints the load average around it."""
    os.chdir(ROOT)
    import app

    app.configure_torch_threads()
    app.configure_memory()
    port = free_port()
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    **app.launch_options())
    load_before = os.getloadavg()
    try:
        return measure(f"http://127.0.0.1:{port}/", rounds)
    finally:
        app.demo.close()
        load = os.getloadavg()
        print(f"load average (1 min / 5 min) before: {load_before[0]:.2f} / {load_before[1]:.2f}, after: "
              f"{load[0]:.2f} / {load[1]:.2f}; cores: {os.cpu_count()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="passes over the ratios %s" % RATIOS)
    args = parser.parse_args()
    latency, facts = serve_and_measure(args.rounds)
    print_latency_table(latency, "step (in the browser)")
    memory, layer = latency[RATIO_STEP], latency[LAYER_STEP]
    print(f"\nratio from memory p50 / layer p50 = {memory['p50'] / layer['p50']:.2f} (target ≤ 1.5)")
    for name, value in facts.items():
        print(f"{name}: {value:.2f}")


if __name__ == "__main__":
    main()
