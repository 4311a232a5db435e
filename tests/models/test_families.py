"""A model family is one adapter and one registration: loading, widths, fidelity and text length ask it."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers as tf

from tomviz.fidelity import final_embeddings
from tomviz.models.adapter import ADAPTERS, adapter_for_type, find_adapter, supported_labels
from tomviz.models.vlm import vlm_adapter_for_type
from tomviz.speed import model_widths

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=120)

# what tomviz/models/loading.py listed by hand before the adapters said it (model_type -> family)
OLD_LISTS = {
    **{t: "bert" for t in ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "data2vec-text")},
    "vit": "vit", "deit": "deit", "dinov2": "dinov2", "dinov2_with_registers": "dinov2",
    "clip": "clip", "clip_vision_model": "clip",
}
OLD_VLM_TYPES = {"smolvlm": "smolvlm", "idefics3": "smolvlm", "llava": "llava", "llava_onevision": "llava_onevision"}


def test_each_model_type_belongs_to_one_family():
    assert {t: adapter_for_type(t).family for t in OLD_LISTS} == OLD_LISTS
    assert {t: vlm_adapter_for_type(t).family for t in OLD_VLM_TYPES} == OLD_VLM_TYPES
    assert adapter_for_type("siglip") is None and adapter_for_type("gpt2") is None and vlm_adapter_for_type("vit") is None
    types = [t for a in ADAPTERS for t in a.model_types]
    assert len(types) == len(set(types)), "a model_type is claimed by two adapters"


def test_the_message_lists_the_loadable_families():
    assert supported_labels() == "ViT, DeiT, DINOv2, CLIP and BERT-family"


@pytest.mark.parametrize("name, build, expected", [
    ("vit", lambda: tf.ViTModel(tf.ViTConfig(**VISION)), (32, 64)),
    ("dinov2", lambda: tf.Dinov2Model(tf.Dinov2Config(**{k: v for k, v in VISION.items() if k != "intermediate_size"},
                                                       mlp_ratio=3)), (32, 96)),
    ("bert", lambda: tf.BertModel(tf.BertConfig(**TEXT)), (32, 64)),
])
def test_widths_come_from_the_adapter(name, build, expected):
    adapter, backbone = find_adapter(build())
    assert adapter.widths(backbone) == expected == model_widths(backbone.config)


def test_roberta_style_models_lose_two_positions():
    bert_adapter, bert = find_adapter(tf.BertModel(tf.BertConfig(**TEXT, max_position_embeddings=40)))
    roberta_adapter, roberta = find_adapter(tf.RobertaModel(tf.RobertaConfig(**TEXT, max_position_embeddings=40)))
    assert bert_adapter is roberta_adapter
    assert (bert_adapter.max_positions(bert), roberta_adapter.max_positions(roberta)) == (40, 38)


def test_fidelity_asks_the_adapter():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])
    outputs = SimpleNamespace(last_hidden_state=hidden, pooler_output=None)
    text_adapter, _ = find_adapter(tf.BertModel(tf.BertConfig(**TEXT)))
    image_adapter, _ = find_adapter(tf.ViTModel(tf.ViTConfig(**VISION)))
    weights = torch.tensor([1.0, 3.0])
    text, name = final_embeddings(outputs, text_adapter, weights)
    np.testing.assert_allclose(text, [[2.5, 1.5]])
    assert name == "mean-pooled tokens" and final_embeddings(outputs, "text", weights)[1] == name
    image, name = final_embeddings(outputs, image_adapter)
    np.testing.assert_allclose(image, [[1.0, 0.0]])
    assert name == "CLS token"


@pytest.mark.parametrize("build, expected", [
    (lambda: tf.DeiTForImageClassificationWithTeacher(tf.DeiTConfig(**VISION, num_labels=3)),
     tf.DeiTForImageClassificationWithTeacher),
    (lambda: tf.DeiTModel(tf.DeiTConfig(**VISION)), tf.DeiTModel),
    (lambda: tf.ViTForImageClassification(tf.ViTConfig(**VISION, num_labels=3)), tf.ViTForImageClassification),
    (lambda: tf.CLIPVisionModel(tf.CLIPVisionConfig(**VISION)), tf.CLIPVisionModel),
])
def test_a_folder_loads_through_its_adapter(tmp_path, build, expected):
    build().save_pretrained(tmp_path)
    config = tf.AutoConfig.from_pretrained(tmp_path)
    model, tokenizer = adapter_for_type(config.model_type).load(tmp_path, config)
    assert type(model) is expected and tokenizer is None
