"""Tiny random models for the score tests (no network)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPTokenizer

from tests import tiny

MLP = 37  # MLP width of these models (their attention is tiny's default: 32 wide, 4 layers, 4 heads)


@pytest.fixture(scope="session")
def vit_classifier():
    return tiny.vit(classifier=5, intermediate_size=MLP, seed=0)


@pytest.fixture(scope="session")
def dinov2():
    return tiny.dinov2(seed=1)


@pytest.fixture(scope="session")
def bert():
    return tiny.bert(vocab_size=99, max_position_embeddings=64, intermediate_size=MLP, seed=2)


@pytest.fixture(scope="session")
def clip():
    text = dict(vocab_size=64, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1, intermediate_size=MLP)
    return tiny.clip(text=text, vision=dict(intermediate_size=MLP), projection_dim=16, seed=3)


@pytest.fixture(scope="session")
def clip_tokenizer():
    """A CLIP BPE tokenizer over letters, no merges: every letter is a token, a word's last one ends in ``</w>``."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


@pytest.fixture()
def photo(tmp_path):
    """A random 56 × 40 RGB photo saved as PNG (its path)."""
    path = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return str(path)
