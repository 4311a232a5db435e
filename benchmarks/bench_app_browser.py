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
  - ratio change off the grid: released at a ratio the grid lacks (0.32, 0.42, …): the model runs;
  - the same two steps in the Text tab, until the coloured tokens, the group table and the CLS-attention plot (drawn
    to the end: Plotly's "plotly_afterplot") and, for a ratio, the token-count and GFLOPs charts show new content.
The targets (issue 23): ratio change from memory p50 ≤ 1.5 × layer change p50, in each tab.
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
TEXT_LAYER_VIEWS = ["#text-groups", "#text-table", "#text-attention .js-plotly-plot"]  # Text tab: tokens, table, plot
TEXT_RATIO_VIEWS = [*TEXT_LAYER_VIEWS, "#text-token-count img", "#text-gflops img"]
TEXT_RATIO_STEP, TEXT_LAYER_STEP = ("Text tab: ratio change from memory → tokens, table, plot, 2 charts shown",
                                    "Text tab: layer change → tokens, table, plot shown")

# Set the visible range input labelled ``label`` to ``value``, fire ``events``, and resolve with the ms until every
# element in ``selectors`` shows something new: a picture a new src that has finished loading; a plotly plot new
# text or colours and Plotly's "plotly_afterplot" (it draws in steps for ~0.1 s after its first text appears);
# any other element new text or background colours (its HTML changes as soon as the event is pending).
STEP_JS = """
async ([label, value, events, selectors, timeout]) => {
  const slider = [...document.querySelectorAll(`input[type=range][aria-label="range slider for ${label}"]`)]
    .find(e => e.offsetParent !== null);
  const shown = (s) => {
    const e = document.querySelector(s);
    if (!e) return null;
    if (e.tagName === "IMG") return e.getAttribute("src");
    const styled = [...e.querySelectorAll("[style*=background]")].map(x => x.style.background).join();
    return e.textContent + styled;
  };
  window.__plotted = new WeakSet();  // graph divs that finished a plot since this step started
  const watch = (e) => {
    if (e && e.classList.contains("js-plotly-plot") && e.on && !e.__stepWatched) {
      e.__stepWatched = true;
      e.on("plotly_afterplot", () => window.__plotted.add(e));
    }
  };
  const ready = (s) => {
    const e = document.querySelector(s);
    if (e.tagName === "IMG") return e.complete && e.naturalWidth > 0;
    return !e.classList.contains("js-plotly-plot") || window.__plotted.has(e);
  };
  selectors.forEach(s => watch(document.querySelector(s)));
  // gradio may draw the plot in a new graph div: listen to it before Plotly's drawing promises run (a mutation
  // observer's callback is a microtask queued before them)
  const observer = new MutationObserver(() => selectors.forEach(s => watch(document.querySelector(s))));
  observer.observe(document.body, {childList: true, subtree: true});
  const before = selectors.map(shown);
  const start = performance.now();
  slider.value = String(value);
  for (const name of events) slider.dispatchEvent(new Event(name, {bubbles: true}));
  const changed = (s, old) => new Promise((resolve, reject) => {
    const tick = () => {
      const now = shown(s);
      if (now !== null && now !== old && ready(s)) return resolve();
      if (performance.now() - start > timeout) return reject(new Error(`${s} did not change`));
      requestAnimationFrame(tick);
    };
    tick();
  });
  try {
    await Promise.all(selectors.map((s, i) => changed(s, before[i])));
  } finally {
    observer.disconnect();
  }
  return performance.now() - start;
}
"""


VISIBLE_VALUE = """(label) => [...document.querySelectorAll(`input[type=range][aria-label="range slider for ${label}"]`)]
  .find(e => e.offsetParent !== null).value"""  # the value of the visible slider labelled ``label``


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
            text = measure_text_tab(page, next(g for v, g in grids.items() if v.endswith(":text")), rounds)
        finally:
            browser.close()
    return {RATIO_STEP: quantiles([t / 1e3 for t in ratio_ms]), LAYER_STEP: quantiles([t / 1e3 for t in layer_ms]),
            "ratio change off the grid (model runs) → its 6 pictures loaded": quantiles([t / 1e3 for t in off_ms]),
            **text}, facts


def text_views(grid, ratio: float, layer: int) -> dict[str, str]:
    """What the Text tab shows at ``ratio`` and ``layer`` (1-based), by selector (of ``TEXT_RATIO_VIEWS``), from
    the page's grid: a view is waited for only when a step changes it (a prompt of 17 tokens often enters a
    layer with the same groups at two ratios, and then the plot stays as it was)."""
    from tomviz.ui import text_tab

    analysis = grid.results[round(ratio, 6)]
    views = text_tab.layer_views(analysis, layer - 1)
    return dict(zip(TEXT_RATIO_VIEWS, map(repr, (views.tokens, views.table.value, views.attention, analysis.trace.token_counts(),
                                                 analysis.speed.merged_gflops))))


def measure_text_tab(page, grid, rounds: int) -> dict[str, dict[str, float]]:
    """The same steps in the Text tab (its ``grid`` is full by now): the ratio slider released at grid ratios, the
    layer slider moved to layers 2, 4 and 6, each until every view it changes shows its new content."""
    page.get_by_role("tab", name="Text", exact=True).click()
    page.wait_for_selector("#text-token-count img", timeout=TIMEOUT_MS)
    page.wait_for_timeout(1000)
    ratio_ms, layer_ms, unchanged = [], [], 0
    state = {"ratio": float(page.evaluate(VISIBLE_VALUE, "Merge ratio")), "layer": int(page.evaluate(VISIBLE_VALUE, "Layer"))}

    def timed(times: list[float], label: str, value: float, events: list[str], candidates: list[str]) -> None:
        nonlocal unchanged
        new = {**state, "ratio" if label == "Merge ratio" else "layer": value}
        old_views, new_views = text_views(grid, **state), text_views(grid, **new)
        selectors = [s for s in candidates if old_views[s] != new_views[s]]
        state.update(new)
        if not selectors:  # nothing to wait for
            unchanged += 1
            return
        times.append(page.evaluate(STEP_JS, [label, value, events, selectors, TIMEOUT_MS]))

    timed([], "Merge ratio", 0.45, ["input", "change", "pointerup"], TEXT_RATIO_VIEWS)  # warm-up
    for _ in range(rounds):
        for ratio in RATIOS:
            timed(ratio_ms, "Merge ratio", ratio, ["input", "change", "pointerup"], TEXT_RATIO_VIEWS)
            page.wait_for_timeout(300)
            for layer in (2, 4, 6):
                timed(layer_ms, "Layer", layer, ["input"], TEXT_LAYER_VIEWS)
                page.wait_for_timeout(100)
    if unchanged:
        print(f"Text tab: {unchanged} step(s) changed no view (not timed)")
    return {TEXT_RATIO_STEP: quantiles([t / 1e3 for t in ratio_ms]),
            TEXT_LAYER_STEP: quantiles([t / 1e3 for t in layer_ms])}


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
    for tab, ratio_step, layer_step in (("Image", RATIO_STEP, LAYER_STEP), ("Text", TEXT_RATIO_STEP, TEXT_LAYER_STEP)):
        memory, layer = latency[ratio_step], latency[layer_step]
        print(f"{tab} tab: ratio from memory p50 / layer p50 = {memory['p50'] / layer['p50']:.2f} (target ≤ 1.5)")
    for name, value in facts.items():
        print(f"{name}: {value:.2f}")


if __name__ == "__main__":
    main()
