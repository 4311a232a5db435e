"""The bench engine on local Ray (2 CPUs) against the in-process path, reruns, bad input, and the
single-input sweep's agreement with it."""
from __future__ import annotations

import math

import pytest

from tomviz.bench import BenchSpec, list_items, make_settings, read_summary, run_bench, summarise
from tomviz.bench.engine import _runtime_env
from tomviz.bench.inputs import label_id
from tomviz.render.bench import pareto_front, report_html

ray = pytest.importorskip("ray")

METHODS = ["tome", "random", "nosuch"]
TIMINGS = {"seconds", "base_seconds", "worker", "device"}  # measured: differ between runs


def _spec(model: str, **kw) -> BenchSpec:
    return BenchSpec(models=[model], settings=make_settings(METHODS, [0.25, 0.5]), batch_size=4, shard_size=8, **kw)


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (starting one costs seconds); run_bench uses it and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=_runtime_env(None, False))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(ray_session, tiny_classifier, image_folder, tmp_path_factory):
    items = list_items(image_folder)
    spec = _spec(tiny_classifier)
    local = run_bench(spec, items, tmp_path_factory.mktemp("local"), engine="local")
    remote = run_bench(spec, items, tmp_path_factory.mktemp("ray"), engine="ray", workers=2)
    return items, spec, local, remote


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
    return a == b


@pytest.mark.slow
def test_ray_equals_single_process(runs):
    items, spec, local, remote = runs
    assert len(items) == 22 and len(local.shards) == 3 and not remote.failed
    a, b = local.rows(), remote.rows()
    assert len(a) == len(b) == 22 * len(spec.settings)
    for x, y in zip(a, b):
        assert (x["item"], x["setting"]) == (y["item"], y["setting"])
        different = [k for k in x if k not in TIMINGS and not _same(x[k], y[k])]
        assert not different, (x["item"], x["setting"], {k: (x[k], y[k]) for k in different})
    # a measured row holds its share of its batch's timed forwards, in seconds (below the whole run's); others none
    assert all(0 < r["seconds"] < remote.seconds and 0 < r["base_seconds"] < remote.seconds for r in b if r["cosine"] is not None)
    assert all(r["seconds"] is None and r["base_seconds"] is None for r in b if r["cosine"] is None)


@pytest.mark.slow
def test_bad_input_is_reported_per_row(runs):
    rows = runs[3].rows()
    broken = [r for r in rows if r["item"] == "red/broken.png"]
    assert broken and all(r["error"].startswith("input:") and r["cosine"] is None for r in broken)
    zebra = [r for r in rows if r["item"] == "zebra/z.png" and r["method"] != "nosuch"]
    assert zebra and all("not one of the model's 3 classes" in r["error"] for r in zebra)
    assert all(0 < r["cosine"] <= 1 + 1e-6 and r["correct"] is None for r in zebra)  # fidelity still measured
    unknown = [r for r in rows if r["method"] == "nosuch" and r["item"] != "red/broken.png"]
    assert len(unknown) == 21 * 2 and all("unknown merge method 'nosuch'" in r["error"] for r in unknown)
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 20 * 4  # 20 images × (tome, random) × 2 ratios
    assert all(0 < r["cosine"] <= 1 + 1e-6 and r["correct"] is not None and r["top5_overlap"] == 1.0 for r in good)
    half = [r for r in good if r["ratio"] == 0.5]
    assert all(r["tokens_in"] == 65 and r["tokens_out"] == 33 and r["gflops"] < r["base_gflops"] for r in half)
    summary = {e["setting"]: e for e in summarise(rows)}
    tome = summary["tome ratio=0.5 constant prop"]
    assert tome["ran"] == 21 and tome["errors"] == 2
    ran = [r for r in rows if r["setting"] == "tome ratio=0.5 constant prop" and r["cosine"] is not None]
    labelled = [r for r in ran if r["correct"] is not None]
    assert len(labelled) == 20 and tome["accuracy"] == pytest.approx(sum(r["correct"] for r in labelled) / 20)
    assert tome["speedup"] == pytest.approx(sum(r["base_seconds"] for r in ran) / sum(r["seconds"] for r in ran))


@pytest.mark.slow
def test_rerun_recomputes_only_the_deleted_shard(runs):
    """The skip happens before dispatch, the same for both engines; in process here, as a new set of Ray
    actors would spend ~10 s importing torch on this 2-CPU machine."""
    items, spec, _, remote = runs
    before = {s.name: s.path(remote.out).stat().st_mtime_ns for s in remote.shards}
    old_rows = remote.rows()
    victim = remote.shards[1]
    victim.path(remote.out).unlink()
    again = run_bench(spec, items, remote.out, engine="local")
    assert again.ran == [victim.name] and sorted(again.skipped) == sorted(set(before) - {victim.name})
    for shard in remote.shards:
        if shard.name != victim.name:
            assert shard.path(remote.out).stat().st_mtime_ns == before[shard.name]
    new_rows = again.rows()
    assert [(r["item"], r["setting"], r["cosine"]) for r in new_rows] == [(r["item"], r["setting"], r["cosine"]) for r in old_rows]


def test_sweep_agrees_with_bench(tiny_classifier, image_folder, tmp_path):
    """The single-input sweep and the bench share their metric code: same numbers on one image."""
    import tomviz
    from tomviz.sweep import sweep

    image = image_folder / "green" / "green3.png"
    items = [i for i in list_items(image_folder) if i.path == str(image)]
    spec = BenchSpec(models=[tiny_classifier], settings=make_settings(["tome", "evit"], [0.5]), batch_size=1)
    rows = run_bench(spec, items, tmp_path, engine="local").rows()
    swept = sweep(tomviz.load(tiny_classifier), str(image), ["tome", "evit"], [0.5], runs=1, warmup=0)
    for b, s in zip(rows, swept):
        assert b["method"] == s.method and b["tokens_out"] == s.tokens_out and b["top1_agree"] == s.top1_agree
        assert b["cosine"] == pytest.approx(s.cosine, abs=1e-7) and b["gflops"] == pytest.approx(s.gflops)


@pytest.mark.slow
def test_summary_report_and_pareto(runs):
    summary, _ = read_summary((runs[3].out / "summary.json").read_text())
    page = report_html(summary, {"inputs": 22})
    assert "Pareto front" in page and "random (baseline)" in page and "tome ratio=0.5 constant prop" in page
    assert pareto_front([(1.0, 0.9), (2.0, 0.8), (1.5, 0.7), (0.5, 0.95), (2.0, 0.6)]) == [3, 0, 1]


def test_labels_resolve_by_name_synonym_or_id():
    labels = {0: "tabby, tabby cat", 1: "tiger cat"}
    assert label_id("tabby cat", labels) == 0 and label_id("tiger_cat", labels) == 1 and label_id("1", labels) == 1
    assert label_id(None, labels) is None
    with pytest.raises(ValueError, match="not one of"):
        label_id("dog", labels)
    with pytest.raises(ValueError, match="no classification head"):
        label_id("dog", None)


def test_summary_in_pieces_equals_the_summary_of_all_rows_and_bounds_settings():
    import random

    from tomviz.bench.results import Summary, summarise

    rng = random.Random(0)
    rows = [dict(model=rng.choice("ab"), setting="s", method=rng.choice(["tome", "random"]), ratio=rng.choice([0.25, 0.5]),
                 r=None, schedule="constant", prop_attn=rng.choice([True, False]),
                 cosine=rng.choice([rng.random(), None]), correct=rng.choice([True, False, None]),
                 base_correct=rng.choice([True, None]), gflops=rng.choice([1.0, None]), base_gflops=2.0,
                 seconds=rng.choice([0.1, None]), base_seconds=0.3, error=rng.choice([None, "boom"]))
            for _ in range(500)]
    pieces = Summary()
    for start in range(0, len(rows), 64):
        pieces.add(rows[start:start + 64])
    assert pieces.entries() == summarise(rows)
    assert len(summarise(rows)) == 16
    with pytest.raises(ValueError, match="more than 15 distinct settings"):
        Summary(max_settings=15).add(rows)


def test_summary_figures_by_hand():
    from tomviz.bench.results import summarise

    key = dict(model="m", setting="tome@0.5", method="tome", ratio=0.5, r=None, schedule="constant", prop_attn=True)
    rows = [dict(key, cosine=0.9, correct=True, base_correct=True, gflops=1.0, base_gflops=2.0, seconds=0.1, base_seconds=0.3),
            dict(key, cosine=0.7, correct=False, base_correct=True, gflops=1.0, base_gflops=2.0, seconds=0.1, base_seconds=0.1),
            dict(key, cosine=float("nan"), correct=None, seconds=0.2, base_seconds=0.2),
            dict(key, cosine=None, error="boom")]
    (entry,) = summarise(rows)
    assert (entry["inputs"], entry["ran"], entry["errors"], entry["first_error"]) == (4, 3, 1, "boom")
    assert entry["cosine"] == pytest.approx(0.8)  # nan and the failed row left out
    assert entry["accuracy"] == 0.5 and entry["base_accuracy"] == 1.0
    assert entry["speedup"] == pytest.approx(0.6 / 0.4) and entry["throughput"] == pytest.approx(3 / 0.4)
    assert entry["flops_speedup"] == 2.0
