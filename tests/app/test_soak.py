"""A short soak of the launched app (benchmarks/bench_soak.py): concurrent sessions, own answers, flat memory."""
from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_concurrent_sessions_get_their_own_answers_and_memory_stays_flat(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_soak import soak

    r = soak(sessions=4, requests=28, ttl_s=60, warmup_per_session=2)
    assert r["errors"] == [] and r["mismatches"] == []
    assert r["requests"] == 28
    assert r["rss_growth"] <= 0.10, f"server RSS {r['rss_warm'] >> 20} → {r['rss_end'] >> 20} MB"
    assert r["disk_end"] < 64 * 1024 * 1024
