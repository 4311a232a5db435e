"""What the speed benchmarks share: the ViT sizes they time and the side-by-side timing loop."""
from __future__ import annotations

from typing import Any, Callable, Hashable

import transformers as tf


def vit_config(size: str = "S") -> tf.ViTConfig:
    """ViT-S/16 or ViT-B/16 at 224 px (197 tokens), as in ToMe's benchmarks."""
    if size == "S":
        return tf.ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                            image_size=224, patch_size=16)
    return tf.ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        image_size=224, patch_size=16)


def side_by_side(
    runs: dict[Hashable, Callable[[], Any]], rounds: int, warmup: int, clock: Callable[[], float]
) -> tuple[dict[Hashable, list[float]], dict[Hashable, Any]]:
    """Time every configuration once per round, in turn, so machine noise hits all of them alike.

    ``warmup`` untimed rounds first. Returns (seconds per round for each key, each run's last result).
    """
    times: dict[Hashable, list[float]] = {key: [] for key in runs}
    results: dict[Hashable, Any] = {}
    for round_index in range(warmup + rounds):
        for key, fn in runs.items():
            start = clock()
            results[key] = fn()
            if round_index >= warmup:
                times[key].append(clock() - start)
    return times, results
