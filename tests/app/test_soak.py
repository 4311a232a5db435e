"""A short soak of the launched app (benchmarks/bench_soak.py): concurrent sessions, own answers, flat memory.

3 sessions (more than the 2 requests an event serves at once, so requests queue) share 12 requests after
one concurrent warm-up request each; with its seeds the run holds photos, prompts, layer scrubs and bad
input (the warm-up before it also downloads a trace). The 400-request soak is BENCHMARKS.md's."""
from __future__ import annotations

from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_concurrent_sessions_get_their_own_answers_and_memory_stays_flat(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_soak import soak

    r = soak(sessions=3, requests=12, ttl_s=60, warmup_per_session=1)
    assert r["errors"] == [] and r["mismatches"] == []
    assert r["requests"] == 12 and r["sessions"] == 3
    assert {"image", "text", "scrub", "bad"} <= set(r["latency"])  # every kind of request was checked
    assert r["rss_growth"] <= 0.10, f"server RSS {r['rss_warm'] >> 20} → {r['rss_end'] >> 20} MB"
    assert r["disk_end"] < 64 * 1024 * 1024
