"""Trace: reading helpers and JSON / npz round trips (no model needed to load)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tomviz
from tomviz.trace import Trace
from tests import tiny


@pytest.fixture(scope="module")
def trace():
    model = tiny.vit(num_hidden_layers=3, image_size=64)
    return tomviz.inspect(model, torch.randn(1, 3, 64, 64), r=8, cls_attention_heads=True, full_attention=True).trace


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_round_trip(trace, tmp_path, suffix):
    path = trace.save(tmp_path / f"t{suffix}")
    loaded = Trace.load(path)
    assert loaded.meta == json.loads(json.dumps(trace.meta))
    assert loaded.num_layers == trace.num_layers
    for a, b in zip(trace.layers, loaded.layers):
        for name in ("source", "sizes", "edges_src", "edges_dst", "edges_score", "cls_attention", "cls_attention_heads", "attention"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-6)


def test_contents(trace):
    assert trace.token_counts() == [65, 57, 49, 41]
    layer = trace.layers[1]
    assert layer.cls_attention.shape == (57,) and abs(layer.cls_attention.sum() - 1) < 1e-5
    assert layer.cls_attention_heads.shape == (4, 57)
    assert layer.attention.shape == (57, 57)
    assert len(layer.edges_src) == 8 and (layer.edges_score <= 1 + 1e-6).all()
    spread = trace.spread(layer.cls_attention, 1, entering=True)
    assert spread.shape == (65,) and not np.isnan(spread).any()
    joined = trace.joined_at(2)
    assert ((joined >= 0) == (trace.sizes(2)[trace.groups(2)] > 1)).all()


def test_bad_version_and_format(tmp_path, trace):
    data = trace.to_dict()
    data["schema_version"] = 99
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="schema version"):
        Trace.load(path)
    with pytest.raises(ValueError, match="unknown trace format"):
        trace.save(tmp_path / "t.pkl")
    with pytest.raises(IndexError):
        trace.groups(3)


def test_stable_groups_name_groups_by_their_smallest_member(trace):
    for layer in range(trace.num_layers):
        groups, stable = trace.groups(layer), trace.stable_groups(layer)
        for g in np.unique(groups):
            members = np.nonzero(groups == g)[0]
            assert (stable[members] == members.min()).all()
    # a token alone through every layer keeps its own index as its name
    alone = np.nonzero(trace.sizes(2)[trace.groups(2)] == 1)[0]
    assert (trace.stable_groups(2)[alone] == alone).all()
