"""tomviz/models/blocks.py: a block hands its attention's keys and queries to the merge state as arguments."""
from __future__ import annotations

import sys
import threading

import torch
import transformers as tf

from tomviz.merge.engine import MergeConfig, MergeState, attention_probabilities
from tomviz.merge.tome import ToMe
from tomviz.models import llm, patching
from tomviz.models.blocks import attend
from tomviz.models.vlm import received_attention

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)


def test_attend_returns_the_projections_its_attention_computed():
    model = tf.ViTModel(tf.ViTConfig(**VISION)).eval()
    patching.apply(model)
    block = model.layers[0]
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        (out, _), projections = attend(block.attention, x)
        torch.testing.assert_close(projections.keys, block.attention.k_proj(x), rtol=0, atol=0)
        torch.testing.assert_close(projections.query, block.attention.q_proj(x), rtol=0, atol=0)
        torch.testing.assert_close(out, block.attention(x)[0], rtol=0, atol=0)


def test_the_state_gets_the_blocks_keys_and_queries():
    model = tf.ViTModel(tf.ViTConfig(**VISION)).eval()
    seen = []
    original = MergeState.after_attention

    class Spy(MergeState):
        def after_attention(self, layer, x, keys, query, num_heads):
            seen.append((layer, keys.shape, None if query is None else query.shape, num_heads))
            return original(self, layer, x, keys, query, num_heads)

    patching.apply(model)
    state = Spy(MergeConfig(method=ToMe(), r=2, trace=True), num_protected=1, num_layers=2)
    with torch.no_grad(), state:
        model(pixel_values=torch.randn(1, 3, 32, 32))
    assert seen == [(0, (1, 17, 32), (1, 17, 32), 4), (1, (1, 15, 32), (1, 15, 32), 4)]
    assert not hasattr(state, "keys") and not hasattr(state, "query")  # nothing stored on the state


def test_received_attention_is_the_per_tile_mean_of_the_full_maps():
    torch.manual_seed(0)
    query, keys = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    bias = torch.zeros(3, 1, 1, 5)
    bias[1, ..., 4] = -1e9  # tile 1: token 4 is padding
    expected = attention_probabilities(query, keys, 2, bias).mean(1).mean(1)  # [3, 5]
    got = received_attention(query, keys, 2, bias)
    torch.testing.assert_close(got, expected)
    assert float(got[1, 4]) == 0.0


def test_llm_apply_patches_once_under_concurrent_first_use(monkeypatch):
    config = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=50)
    language_model = tf.LlamaModel(config).eval()
    calls = []
    make = llm._make_forward
    monkeypatch.setattr(llm, "_make_forward", lambda layer, index: calls.append(index) or make(layer, index))
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        llm.apply(language_model)

    threads = [threading.Thread(target=work) for _ in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert sorted(calls) == [0, 1, 2], "the decoder layers were wrapped more than once"
    llm.remove(language_model)
    assert all("forward" not in layer.__dict__ for layer in language_model.layers)
