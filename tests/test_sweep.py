"""tomviz/sweep.py: one row per method x ratio on a tiny random ViT classifier, and the CSV it writes."""
from __future__ import annotations

import csv

import pytest
import torch

import tomviz
from tomviz.speed import gflops_per_layer
from tomviz.sweep import COLUMNS, SweepRow, sweep, to_csv

BASE_GFLOPS = sum(gflops_per_layer([65] * 4, [65] * 4, 32, 64))  # 65 tokens through 4 layers, 32 wide, MLP 64


@pytest.fixture(scope="module")
def rows(tiny_vit_classifier) -> list[SweepRow]:
    torch.manual_seed(1)
    loaded = tomviz.load(tiny_vit_classifier)
    return sweep(loaded, torch.randn(1, 3, 32, 32), ["tome", "evit"], [0.0, 0.5, 0.95], runs=1, warmup=0, input_name="noise")


def test_one_row_per_method_and_ratio(rows):
    assert [(r.input, r.method, r.ratio) for r in rows] == [
        ("noise", m, ratio) for m in ("tome", "evit") for ratio in (0.0, 0.5, 0.95)]
    assert {r.tokens_in for r in rows} == {65} and len({r.baseline_latency_s for r in rows}) == 1  # one baseline


def test_ratio_zero_is_the_unmerged_model(rows):
    for r in rows[0], rows[3]:
        assert (r.tokens_out, r.top1_agree, r.top5_overlap, r.error) == (65, True, 1.0, None)
        assert r.cosine == pytest.approx(1.0, abs=1e-6) and r.gflops == r.base_gflops == pytest.approx(BASE_GFLOPS)


def test_half_the_tokens_removed(rows):
    merged = sum(gflops_per_layer([65, 57, 49, 41], [57, 49, 41, 33], 32, 64))  # 8 tokens per layer
    for r in rows[1], rows[4]:
        assert r.tokens_out == 33 and r.error is None
        assert r.gflops == pytest.approx(merged) and r.base_gflops == pytest.approx(BASE_GFLOPS)
        assert 0.99 < r.cosine <= 1 + 1e-6 and r.top1_agree is True
        assert r.top5_overlap in (0.6, 0.8, 1.0)  # a share of the unmerged top 5 (of 10 classes): most kept
        assert r.speedup == pytest.approx(r.baseline_latency_s / r.latency_s)


def test_an_unreachable_ratio_is_a_row_with_the_reason(rows):
    for r in rows[2], rows[5]:
        assert r.error.startswith("ratio 0.95 asks to remove 61 of 64 tokens in 4 layers")
        assert (r.tokens_out, r.cosine, r.gflops, r.latency_s, r.speedup) == (None, None, None, None, None)


def test_csv_has_the_columns_and_empty_cells_for_missing_figures(rows, tmp_path):
    path = to_csv(rows, tmp_path / "sweep.csv")
    with path.open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        table = list(reader)
    assert len(table) == 6
    assert (table[1]["method"], table[1]["ratio"], table[1]["tokens_out"]) == ("tome", "0.5", "33")
    assert float(table[1]["cosine"]) == pytest.approx(rows[1].cosine)
    assert table[2]["cosine"] == table[2]["tokens_out"] == "" and table[2]["error"] == rows[2].error
