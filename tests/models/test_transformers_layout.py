"""Fails loudly when the transformers layout tomviz patches is not there (pinned version)."""
from __future__ import annotations

from pathlib import Path

import transformers as tf

from tests import tiny

ROOT = Path(__file__).resolve().parents[2]


def test_pinned_version_is_installed():
    pinned = [l for l in (ROOT / "requirements.txt").read_text().splitlines() if l.startswith("transformers==")]
    assert pinned, "requirements.txt must pin transformers"
    assert tf.__version__ == pinned[0].split("==")[1], f"installed {tf.__version__}, pinned {pinned[0]}"


def test_module_layout_patched_by_the_adapters():
    one_layer = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    vit = tiny.vit(image_size=16, **one_layer)
    layer = vit.layers[0]
    for name in ("layernorm_before", "attention", "layernorm_after", "mlp"):
        assert hasattr(layer, name), f"ViTLayer.{name} missing: the vit adapter needs updating"
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert hasattr(layer.attention, name), f"ViTAttention.{name} missing"
    dino = tiny.dinov2(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16)
    block = dino.encoder.layer[0]
    for name in ("norm1", "attention", "layer_scale1", "norm2", "mlp", "layer_scale2"):
        assert hasattr(block, name), f"Dinov2Layer.{name} missing"
    assert hasattr(block.attention, "k_proj") and hasattr(block.attention, "q_proj")
    clip = tiny.clip_vision(image_size=16, **one_layer)
    block = clip.vision_model.encoder.layers[0] if hasattr(clip, "vision_model") else clip.encoder.layers[0]
    for name in ("layer_norm1", "self_attn", "layer_norm2", "mlp"):
        assert hasattr(block, name), f"CLIPEncoderLayer.{name} missing"
    bert = tiny.bert(vocab_size=10, **one_layer)
    block = bert.encoder.layer[0]
    assert hasattr(block.attention.self, "key") and hasattr(block.attention.self, "query")
    assert hasattr(block, "feed_forward_chunk")
