"""App latency as a visitor sees it: Debian's chromium (headless, Playwright) against `python app.py`.

    python benchmarks/bench_app_browser.py --rounds 5

The Image tab opens on an inspected example photo. Then, for each step, the time from the input event in the
page to the moment its pictures have loaded in the page (measured in the page with performance.now()):
* layer change: the layer slider moves (its `input` event) → the overlay's new picture has loaded;
* ratio change: the ratio slider is released at a new value → the overlay and the strip (made only by a
  model run) have both loaded their new pictures.
This is the same request path as benchmarks/bench_app.py, without gradio_client's own per-call cost.
"""
from __future__ import annotations

import argparse
import os
import statistics

from app_server import start_app

CHROMIUM = os.environ.get("TOMVIZ_CHROMIUM", "/usr/bin/chromium")
RATIOS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
TIMEOUT_MS = 120_000

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


def _quantiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50": statistics.median(ordered), "p90": ordered[int(0.9 * (len(ordered) - 1))], "min": ordered[0],
            "n": len(ordered)}


def measure(url: str, rounds: int) -> dict[str, dict[str, float]]:
    from playwright.sync_api import sync_playwright

    ratio_ms, layer_ms = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#overlay img", timeout=TIMEOUT_MS)  # the example, inspected on page load
            page.wait_for_selector("#layer-strip img", timeout=TIMEOUT_MS)
            page.wait_for_timeout(1000)
            step = lambda *args: page.evaluate(STEP_JS, [*args, TIMEOUT_MS])  # noqa: E731
            step("Merge ratio", 0.45, ["input", "change", "pointerup"], ["#overlay img", "#layer-strip img"])  # warm-up
            for _ in range(rounds):
                for ratio in RATIOS:
                    ratio_ms.append(step("Merge ratio", ratio, ["input", "change", "pointerup"],
                                         ["#overlay img", "#layer-strip img"]))
                    page.wait_for_timeout(300)  # the follow-up steps (lineage, link) settle
                    for layer in (2, 7, 12):
                        layer_ms.append(step("Layer", layer, ["input"], ["#overlay img"]))
                        page.wait_for_timeout(100)
        finally:
            browser.close()
    return {"ratio change → overlay and strip loaded": _quantiles([t / 1e3 for t in ratio_ms]),
            "layer change → overlay loaded": _quantiles([t / 1e3 for t in layer_ms])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an app that is already running (default: start one)")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the ratios %s" % RATIOS)
    args = parser.parse_args()
    load_before = os.getloadavg()
    proc, url = (None, args.url) if args.url else start_app()
    try:
        results = measure(url, args.rounds)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    load = os.getloadavg()
    print(f"load average (1 min / 5 min) before: {load_before[0]:.2f} / {load_before[1]:.2f}, after: "
          f"{load[0]:.2f} / {load[1]:.2f}; cores: {os.cpu_count()}")
    print("| step (in the browser) | p50 (s) | p90 (s) | min (s) | n |\n|---|---|---|---|---|")
    for name, q in results.items():
        print(f"| {name} | {q['p50']:.3f} | {q['p90']:.3f} | {q['min']:.3f} | {q['n']} |")


if __name__ == "__main__":
    main()
