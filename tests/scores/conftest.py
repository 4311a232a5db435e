"""Tiny random models for the score tests (no network)."""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel, CLIPTokenizer, Dinov2Config, Dinov2Model, ViTConfig, ViTForImageClassification

SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37)


@pytest.fixture(scope="session")
def vit_classifier():
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, num_labels=5, **SMALL)).eval()


@pytest.fixture(scope="session")
def dinov2():
    torch.manual_seed(1)
    return Dinov2Model(Dinov2Config(image_size=32, patch_size=8, **SMALL)).eval()


@pytest.fixture(scope="session")
def bert():
    torch.manual_seed(2)
    return BertModel(BertConfig(vocab_size=99, max_position_embeddings=64, **SMALL)).eval()


@pytest.fixture(scope="session")
def clip():
    torch.manual_seed(3)
    config = CLIPConfig(
        text_config=dict(vocab_size=64, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1, **SMALL),
        vision_config=dict(image_size=32, patch_size=8, **SMALL),
        projection_dim=16,
    )
    return CLIPModel(config).eval()


@pytest.fixture(scope="session")
def clip_tokenizer():
    """A CLIP BPE tokenizer over letters, no merges: every letter is a token, a word's last one ends in ``</w>``."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])
