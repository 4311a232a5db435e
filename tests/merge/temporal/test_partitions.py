"""Every temporal method gives a valid partition on clips of any length, including one frame."""
from __future__ import annotations

import pytest
import torch

from tomviz.merge.temporal import (
    drop_frames, dycoke, fastvid, framefusion, holitom, random_all_frames, rlt, tome_all_frames,
)

METHODS = {
    "drop_frames": lambda x, a, p: drop_frames(x, 0.3),
    "tome_all_frames": lambda x, a, p: tome_all_frames(x, 0.3),
    "random_all_frames": lambda x, a, p: random_all_frames(x, 0.3),
    "framefusion": lambda x, a, p: framefusion(x),
    "holitom": lambda x, a, p: holitom(x, a, 0.2),
    "fastvid": lambda x, a, p: fastvid(x, a, x.mean(1), 0.3),
    "dycoke": lambda x, a, p: dycoke(x),
    "rlt": lambda x, a, p: rlt(x, p, 2),
}


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("frames", [1, 2, 3, 5, 9])
def test_partition_is_valid(name, frames):
    g = torch.Generator().manual_seed(frames)
    base = torch.randn(1, 16, 6, generator=g)
    tokens = base + 0.5 * torch.rand(frames, 16, 1, generator=g) * torch.randn(frames, 16, 6, generator=g)
    attention = torch.rand(frames, 16, generator=g)
    pixels = torch.randn(1, 3, 8, 8, generator=g) + 0.2 * torch.randn(frames, 3, 8, 8, generator=g)
    reduction = METHODS[name](tokens, attention, pixels)
    reduction.validate()
    assert reduction.num_frames == frames and reduction.tokens_per_frame == 16
    assert reduction.tokens.shape == (reduction.num_kept, 6)
    assert 0 < reduction.num_kept <= frames * 16


def test_validate_catches_a_broken_partition():
    reduction = framefusion(torch.randn(2, 3, 4))
    broken = type(reduction)(reduction.tokens, reduction.group.clone().fill_(0), reduction.position, 2, 3)
    with pytest.raises(AssertionError):
        broken.validate()
