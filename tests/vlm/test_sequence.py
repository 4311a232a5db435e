"""The FastV request the prefill sends the LLM: FastV's own count and choice (pkunlp-icler/FastV @d165972,
``LlamaModel.fastv_forward``: ``round(V * (1 - r))`` tokens by ``torch.topk``)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tomviz.vlm.reduction import Reduction
from tomviz.vlm.sequence import fastv_request

LOADED = SimpleNamespace(language_model=SimpleNamespace(layers=[None] * 4))  # only the layer count is read


def test_fastv_count_rounds_halves_to_even():
    assert fastv_request(LOADED, Reduction("llm", "fastv", 0.5), 5).keep == 2  # 2.5 → 2 (V - round(r V) gave 3)
    assert fastv_request(LOADED, Reduction("llm", "fastv", 0.5), 7).keep == 4  # 3.5 → 4
    assert fastv_request(LOADED, Reduction("llm", "fastv", 0.95), 4).keep == 1  # round(0.2) = 0: at least one


def test_fastv_select_keeps_the_most_attended_in_order():
    request = fastv_request(LOADED, Reduction("llm", "fastv", 0.5), 6)
    attention = torch.tensor([[0.1, 0.3, 0.05, 0.2, 0.25, 0.1]])
    assert request.select(attention).tolist() == [1, 3, 4]


def test_fastv_layer_must_exist():
    with pytest.raises(ValueError, match="fastv_layer"):
        fastv_request(LOADED, Reduction("llm", "fastv", 0.5, fastv_layer=4), 6)
