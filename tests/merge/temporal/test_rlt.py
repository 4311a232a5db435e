"""RLT's static-patch rule, from the definition in rccchoudhury/rlt (69ec8b4) batched_find_idxs_to_keep."""
from __future__ import annotations

import pytest
import torch

from tests.merge.temporal.clips import frames_of, groups_of
from tomviz.merge.temporal.rlt import imagenet_normalize, rlt, static_token_mask


def test_tubelets_compare_last_frame_with_previous_first_frame():
    def mask(levels):  # one 2x2 patch, grey levels per frame (already normalised)
        pixels = torch.tensor(levels, dtype=torch.float32)[:, None, None, None].expand(-1, 3, 2, 2)
        return static_token_mask(pixels, patch=2, tubelet=2, threshold=0.1).flatten().tolist()

    assert mask([0, 0, 0, 0.5]) == [True, True]  # frame 3 vs frame 0: 0.5 > 0.1
    assert mask([0, 9, 9, 0.05]) == [True, False]  # frames 1 and 2 are not read
    assert mask([0, 0]) == [True]  # the first tubelet always stays
    with pytest.raises(ValueError, match="do not tile"):
        static_token_mask(torch.zeros(3, 3, 4, 4), patch=2, tubelet=2)


def square_video(frames: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured static 112x112 background and a white 28x28 square moving 2 patches (of 14) per frame."""
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (1, 112, 112, 3), generator=g, dtype=torch.uint8).repeat(frames, 1, 1, 1)
    square = torch.zeros(frames, 8, 8, dtype=torch.bool)
    for t in range(frames):
        col = 2 * t % 7
        video[t, 42:70, 14 * col : 14 * col + 28] = 255
        square[t, 3:5, col : col + 2] = True
    return video, square.flatten(1)


def test_static_background_runs_moving_square_kept():
    video, square = square_video()
    keep = static_token_mask(imagenet_normalize(video), patch=14)  # [6, 8, 8]
    left = torch.zeros_like(square)
    left[1:] = square[:-1] & ~square[1:]  # where the square just was
    assert torch.equal(keep.flatten(1)[1:], (square | left)[1:])  # exactly the patches that changed
    reduction = rlt(torch.randn(6, 64, 4), imagenet_normalize(video), patch=14)
    reduction.validate()
    assert reduction.num_kept == 64 + int((square | left)[1:].sum())
    never = ~(square | left).any(dim=0)
    for members in groups_of(reduction):
        position = min(members) % 64
        if bool(never[position]):
            assert frames_of(members, 64) == set(range(6)), "a static patch is not one run"
        assert {i % 64 for i in members} == {position}
