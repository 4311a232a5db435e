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

from app_server import measure_app, print_latency_table, quantiles

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
    return {"ratio change → overlay and strip loaded": quantiles([t / 1e3 for t in ratio_ms]),
            "layer change → overlay loaded": quantiles([t / 1e3 for t in layer_ms])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an app that is already running (default: start one)")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the ratios %s" % RATIOS)
    args = parser.parse_args()
    print_latency_table(measure_app(args.url, lambda url: measure(url, args.rounds)), "step (in the browser)")

if __name__ == "__main__":
    main()
