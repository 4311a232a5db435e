"""App latency through gradio_client against the running app (CPU, default vision model).

    python benchmarks/bench_app.py                 # starts `python app.py` on a free port, then measures
    python benchmarks/bench_app.py --url http://127.0.0.1:7860/   # measure an app that is already running

Measures, as a user's client sees it (upload + queue + model + rendering + download of results):
* ratio change: `/inspect_image` with a new ratio on the same photo → all outputs (targets p50 ≤ 0.5 s);
* layer change: `/render_image_layer` (re-render from the stored trace, no model) (target p50 ≤ 0.15 s).

After these, for reference (not a target): a no-op event, `/image_view_link` (a few string operations, one
text output), through the same client: the round trip that every call above pays before any work or
download (gradio_client opens new HTTP connections per call and one more per output file).

The client verifies TLS with one context built once (``ssl_verify=<ssl.SSLContext>``, the same checks as
httpx's default), as a browser loads its trust store once. gradio_client's default (``ssl_verify=True``)
builds a new httpx client per HTTP call, and httpx then loads the CA bundle again: 40-100 ms per call on
this 2-core VM, even for a plain http:// URL, 2 calls per event plus 1 per uploaded and 1 per returned
file. That is the client library's cost, not the app's; measure it with

    python benchmarks/bench_app.py --tls-per-call   # gradio_client's default: the CA bundle loaded per call
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from app_server import measure_app, print_latency_table, quantiles

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "assets" / "chelsea.png"
RATIOS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def client_tls(per_call: bool):
    """What the client passes to httpx as ``verify`` on every call: True (gradio_client's default: httpx
    builds a TLS context, loading the CA bundle, per call) or one context built here, verifying the same."""
    import httpx

    return True if per_call else httpx.create_ssl_context()


def measure(url: str, rounds: int, tls_per_call: bool = False) -> dict[str, dict[str, float]]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, ssl_verify=client_tls(tls_per_call))
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
        client.predict(example="chelsea.png", model="dinov2-small", method="tome", schedule="constant", ratio=0.5,
                       layer=6, api_name="/image_view_link")
        noop_times.append(time.perf_counter() - start)
    return {"ratio change → all outputs": quantiles(ratio_times), "layer change": quantiles(layer_times),
            "no-op event (reference)": quantiles(noop_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an app that is already running (default: start one)")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the ratios %s" % RATIOS)
    parser.add_argument("--tls-per-call", action="store_true",
                        help="gradio_client's default: a new TLS context (CA bundle loaded) for every HTTP call")
    args = parser.parse_args()
    results = measure_app(args.url, lambda url: measure(url, args.rounds, tls_per_call=args.tls_per_call))
    print("client TLS:", "a context per HTTP call (gradio_client's default)" if args.tls_per_call
          else "one context, built once")
    print_latency_table(results)

if __name__ == "__main__":
    main()
