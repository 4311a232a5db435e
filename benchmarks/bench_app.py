"""App latency through gradio_client against the running app (CPU, default vision model).

    python benchmarks/bench_app.py                 # starts `python app.py` on a free port, then measures
    python benchmarks/bench_app.py --url http://127.0.0.1:7860/   # measure an app that is already running

Measures, as a user's client sees it (upload + queue + model + rendering + download of results):
* ratio change: `/inspect_image` with a new ratio on the same photo → all outputs (targets p50 ≤ 0.5 s);
* layer change: `/render_image_layer` (re-render from the stored trace, no model) (target p50 ≤ 0.15 s).

After these, for reference (not a target): a no-op event, `/image_view_link` (a few string operations, one
text output), through the same client: the round trip that every call above pays before any work or
download (gradio_client opens new HTTP connections per call and one more per output file).

    python benchmarks/bench_app.py --no-ssl-verify   # diagnostic, not how the targets are measured

gradio_client builds a new httpx client, with a TLS context that loads a CA bundle, for every HTTP call:
2 per event, 1 per uploaded and 1 per returned file. On a slow or busy CPU that costs 35-100 ms each, even
for a plain http:// URL, where nothing is verified. ``--no-ssl-verify`` (gradio_client's ``ssl_verify=False``)
skips loading the bundle: the difference between the two runs is the client's TLS setup, not the app.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from app_server import measure_app, print_latency_table, quantiles

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "assets" / "chelsea.png"
RATIOS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def measure(url: str, rounds: int, ssl_verify: bool = True) -> dict[str, dict[str, float]]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, ssl_verify=ssl_verify)
    photo = handle_file(str(PHOTO))
    client.predict(image=photo, ratio=0.5, api_name="/inspect_image")  # first use: model load + reference run
    client.predict(image=photo, ratio=0.4, api_name="/inspect_image")
    ratio_times, layer_times = [], []
    for _ in range(rounds):
        for ratio in RATIOS:
            start = time.perf_counter()
            client.predict(image=photo, ratio=ratio, api_name="/inspect_image")
            ratio_times.append(time.perf_counter() - start)
            for layer in (2, 7, 12):
                start = time.perf_counter()
                client.predict(layer=layer, opacity=0.8, api_name="/render_image_layer")
                layer_times.append(time.perf_counter() - start)
    noop_times = []
    for _ in range(rounds * len(RATIOS)):
        start = time.perf_counter()
        client.predict("dinov2-small", "tome", "constant", 0.5, 6, api_name="/image_view_link")
        noop_times.append(time.perf_counter() - start)
    return {"ratio change → all outputs": quantiles(ratio_times), "layer change": quantiles(layer_times),
            "no-op event (reference)": quantiles(noop_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an app that is already running (default: start one)")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the ratios %s" % RATIOS)
    parser.add_argument("--no-ssl-verify", action="store_true",
                        help="diagnostic: the client skips its per-call TLS setup (see above); not the target measurement")
    args = parser.parse_args()
    results = measure_app(args.url, lambda url: measure(url, args.rounds, ssl_verify=not args.no_ssl_verify))
    if args.no_ssl_verify:
        print("client: ssl_verify=False (diagnostic: no TLS setup per HTTP call; not the target measurement)")
    print_latency_table(results)

if __name__ == "__main__":
    main()
