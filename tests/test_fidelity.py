from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tomviz.fidelity import cosine, final_embedding, top_labels


def test_text_embedding_is_size_weighted_mean():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # two final tokens
    outputs = SimpleNamespace(last_hidden_state=hidden, logits=None)
    embedding, name = final_embedding(outputs, "text", torch.tensor([1.0, 3.0]))
    np.testing.assert_allclose(embedding, [0.25, 0.75])
    assert name == "mean-pooled tokens"


def test_image_prefers_pooled_then_cls_and_classifiers_use_logits():
    hidden = torch.arange(6.0).view(1, 3, 2)
    assert final_embedding(SimpleNamespace(last_hidden_state=hidden), "image")[1] == "CLS token"
    pooled = SimpleNamespace(last_hidden_state=hidden, pooler_output=torch.ones(1, 2))
    np.testing.assert_allclose(final_embedding(pooled, "image")[0], [1, 1])
    logits = SimpleNamespace(logits=torch.tensor([[0.0, 2.0, 1.0]]))
    assert final_embedding(logits, "image")[1] == "logits"
    assert [label for label, _ in top_labels(logits, {0: "a", 1: "b", 2: "c"}, k=2)] == ["b", "c"]


def test_cosine():
    assert cosine(np.array([1.0, 0.0]), np.array([2.0, 0.0])) == pytest.approx(1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(0.0)
    assert np.isnan(cosine(np.zeros(2), np.ones(2)))


def test_embedding_fidelity_json_has_top_labels_only_for_classifiers():
    from tomviz.fidelity import EmbeddingFidelity

    assert EmbeddingFidelity("CLS token", 0.5).to_dict() == {"embedding": "CLS token", "cosine": 0.5}
    both = EmbeddingFidelity("logits", 0.9, [("cat", 0.6)], [("dog", 0.7)]).to_dict()
    assert both["top_merged"] == [("cat", 0.6)] and both["top_unmerged"] == [("dog", 0.7)]
