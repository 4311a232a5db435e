"""A tiny ViT classifier saved as a local folder (classes red, green, blue) and a generated ImageFolder
of 20 images in those 3 classes, plus an unreadable file and a class the model does not have."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests import tiny

CLASSES = ("red", "green", "blue")


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-vit")
    tiny.vit(classifier=CLASSES, num_attention_heads=2, patch_size=4, seed=0).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "size": {"height": 32, "width": 32}, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2}))
    return str(folder)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """20 images (7 red, 7 green, 6 blue; varied sizes), ``red/broken.png`` (not an image), ``zebra/z.png``."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(7 if c < 2 else 6):
            pixels = rng.integers(0, 90, (36 + 4 * i, 48, 3), dtype=np.uint8)
            pixels[..., c] += 150
            Image.fromarray(pixels).save(root / name / f"{name}{i}.png")
    (root / "red" / "broken.png").write_bytes(b"this is not an image")
    (root / "zebra").mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "zebra" / "z.png")
    return root
