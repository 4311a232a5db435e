"""tomviz.inspect on clips: the trace's frame geometry, ratio 0, static vs moving, the Done-when check."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tomviz
from tests.inputs.clips import patch_mask, square_clip
from tomviz.inputs.video import example_clips, read_video
from tomviz.trace import Trace
from tomviz.video import VideoResult, is_video_input


def test_the_trace_maps_every_input_token_frame_major(tiny_frames_model):
    frames, _ = square_clip()
    result = tomviz.inspect(tiny_frames_model, frames, method="holitom", ratio=0.5, feature_layer=1)
    assert isinstance(result, VideoResult)
    trace = result.trace
    assert trace.frame_grid == (8, 8, 8) and trace.num_input_tokens == 512 and trace.num_protected == 0
    assert trace.meta["stages"] == ["holitom"] and trace.num_layers == 1
    assert np.array_equal(trace.groups(0), result.reduction.group.numpy())
    assert trace.token_place(8 * 64 - 1) == (7, 7, 7) and trace.token_place(64 + 8 + 2) == (1, 1, 2)
    assert trace.on_frame_grid(np.arange(512))[1, 1, 2] == 64 + 8 + 2
    assert trace.tokens_per_frame().sum() == result.token_counts()[-1]
    assert Trace.from_dict(trace.to_dict()).frame_grid == (8, 8, 8)


def test_ratio_zero_leaves_every_token_alone_and_the_embedding_unchanged(tiny_frames_model):
    frames, _ = square_clip()
    for method in ("holitom", "tome", "dycoke"):
        result = tomviz.inspect(tiny_frames_model, frames, method=method, ratio=0.0, feature_layer=1)
        assert result.trace.groups(0).tolist() == list(range(512))
        assert result.fidelity == pytest.approx(1.0, abs=1e-6) and result.token_mean_fidelity == pytest.approx(1.0, abs=1e-6)


def test_static_background_merges_across_frames_and_the_moving_square_does_not(tiny_frames_model):
    frames, moving = square_clip()
    square = patch_mask(moving, 4)  # [512] the square's tokens
    result = tomviz.inspect(tiny_frames_model, frames, method="holitom", ratio=0.5, feature_layer=1)
    group = result.trace.groups(0)
    spanned = result.reduction.frames_spanned().numpy()
    assert (spanned[group[square & (group >= 0)]] == 1).all()  # the square: never merged over time
    background = group[~square & (group >= 0)]
    assert (spanned[background] > 1).mean() > 0.5  # most of the background: merged across frames


def test_encoder_outputs_are_reused(tiny_frames_model):
    frames, _ = square_clip()
    first = tomviz.inspect(tiny_frames_model, frames, method="holitom", ratio=0.5, feature_layer=1)
    again = tomviz.inspect(tiny_frames_model, first.video, method="fastvid", ratio=0.5, feature_layer=1,
                           features=first.features)
    assert again.features is first.features
    assert again.trace.meta["method"] == "fastvid"


def test_a_clip_file_and_clear_errors(tiny_frames_model, square_mp4, tmp_path):
    result = tomviz.inspect(tiny_frames_model, str(square_mp4), method="frame_drop", ratio=0.75, num_frames=8)
    assert result.trace.frame_grid[0] == 8 and result.token_counts() == [512, 128]
    assert result.trace.tokens_per_frame().tolist() == [64, 0, 0, 0, 0, 0, 0, 64]  # the first and the last frame
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match="not a readable video"):
        tomviz.inspect(tiny_frames_model, str(broken), method="holitom", ratio=0.5)
    with pytest.raises(ValueError, match="a clip takes ratio="):
        tomviz.inspect(tiny_frames_model, str(square_mp4), method="holitom", r=8)
    with pytest.raises(ValueError, match="pitome works in the encoder, not on a clip's frames: there choose one of dycoke"):
        tomviz.inspect(tiny_frames_model, str(square_mp4), method="pitome", ratio=0.5)


def test_what_counts_as_a_clip(tmp_path):
    assert is_video_input("a.mp4") and is_video_input(np.zeros((2, 4, 4, 3), np.uint8)) and is_video_input([np.zeros((4, 4, 3))])
    assert not is_video_input("a.png") and not is_video_input(("image", "question")) and not is_video_input("a text")
    assert is_video_input(tmp_path) and not is_video_input("word " * 2000)  # a folder of frames; a long text


@pytest.mark.slow
def test_world_mp4_holitom_merges_the_black_background_and_keeps_the_continents():
    """The issue's check: world.mp4 (a globe turning on black), HoliTom at 0.9 on the embedded DINOv2-S (block 6).
    Measured (2026-12): 3339 black tokens in 150 groups (87 static clusters spanning all 16 frames, the rest
    dark tokens by the globe's edge kept alone), 85 % of them in groups spanning ≥ 8 frames; of 443 bright
    moving tokens 277 kept, 8 % of those in a group with black members, 84 % alone. On the last block
    (cosine ≈ 0.99 for the moving continents too) nothing is dynamic and 64 groups mix globe and background."""
    video = read_video(example_clips()["world.mp4"], 16)
    result = tomviz.inspect("dinov2-small", video, method="holitom", ratio=0.9)
    pixels = result.features.pixels  # [T, 3, 224, 224] normalised
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    brightness = torch.nn.functional.avg_pool2d((pixels * std + mean).mean(1, keepdim=True), 14)[:, 0]  # [T, 16, 16]
    change = torch.zeros_like(brightness, dtype=torch.bool)
    step = torch.nn.functional.avg_pool2d((pixels[1:] - pixels[:-1]).abs().mean(1, keepdim=True), 14)[:, 0] > 0.15
    change[1:] |= step
    change[:-1] |= step
    black = (brightness < 0.08).flatten().numpy()  # the background
    continents = ((brightness >= 0.08) & change).flatten().numpy()  # bright and moving
    group = result.trace.groups(0)
    spanned = result.reduction.frames_spanned().numpy()
    assert result.reduction.segments == ((0, 15),)
    background_groups = np.unique(group[black & (group >= 0)])
    assert background_groups.size < 0.06 * black.sum()  # ~3300 black tokens → a few groups
    assert (spanned[group[black & (group >= 0)]] >= 8).mean() > 0.75  # that span most of the clip
    kept = continents & (group >= 0)
    assert kept.sum() > 0.5 * continents.sum()  # the continents stay (dominant tokens) ...
    mixed = np.isin(group[kept], background_groups)
    assert mixed.mean() < 0.15  # ... and do not join the background
    assert (spanned[group[kept]] == 1).mean() > 0.75  # nor merge over time
