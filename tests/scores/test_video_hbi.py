"""HBI on clips: the value function on hand-worked games, the interaction against a brute-force enumeration,
DPC-KNN frame and word groups, and the API on a tiny random CLIP (no network)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image

import tomviz
from tests.inputs.clips import square_clip
from tomviz import score_analysis
from tomviz.scores.video_hbi import (
    FrameWordFeatures,
    frame_word_features,
    grouped,
    hbi_value,
    video_text_game,
)

# words × frames (the original's t × v)
SIM = np.array([[0.5, -0.2],
                [0.1, 0.3]])


def _value(words: list[bool], frames: list[bool], **logits) -> float:
    return float(hbi_value(SIM, np.array([frames]), np.array([words]), **logits)[0])


def test_value_of_the_full_and_empty_coalitions_by_hand():
    # rows' maxima 0.5, 0.3 (mean 0.4); columns' maxima 0.5, 0.3 (mean 0.4)
    assert _value([True, True], [True, True]) == pytest.approx(0.4)
    assert _value([False, False], [False, False]) == 0.0
    assert _value([True, True], [False, False]) == 0.0  # every cell masked to 0


def test_masked_cells_are_zero_and_take_part_in_the_maxima():
    # frame 0 absent: word 0's row is [0, -0.2] → max 0 (not -0.2); word 1's [0, 0.3] → 0.3; t2v = (0 + 0.3) / 2
    # only frame 1 weighs: its column [-0.2, 0.3] → 0.3; v = (0.15 + 0.3) / 2
    assert _value([True, True], [False, True]) == pytest.approx(0.225)
    # word 1 absent: its weight is 0 and its row 0; frame 1's column [-0.2, 0] → max 0
    # t2v = 0.5 (word 0 alone); v2t = (0.5 + 0) / 2; v = (0.5 + 0.25) / 2
    assert _value([True, False], [True, True]) == pytest.approx(0.375)


def test_weight_logits_are_a_softmax_over_the_present_players():
    words = np.log([3.0, 1.0])  # weights 0.75, 0.25 when both are present
    # t2v = 0.75 * 0.5 + 0.25 * 0.3 = 0.45; v2t uniform = 0.4
    assert _value([True, True], [True, True], word_logits=words) == pytest.approx(0.425)
    # word 0 absent: word 1 takes all the weight whatever its logit: t2v = 0.3; columns [0, 0.1], [0, 0.3]: v2t = 0.2
    assert _value([False, True], [True, True], word_logits=words) == pytest.approx(0.25)


def _features(frames: int, words: int, seed: int = 0, dim: int = 8) -> FrameWordFeatures:
    g = torch.Generator().manual_seed(seed)
    return FrameWordFeatures(frames=torch.randn(frames, dim, generator=g), words=torch.randn(words, dim, generator=g),
                             word_names=[f"w{k}" for k in range(words)], model="random")


def _brute_force_interaction(sim: np.ndarray, i: int, j: int) -> float:
    """Frame i × word j: the mean over every S of the other players of v(S∪ij) − v(S∪i) − v(S∪j) + v(S)."""
    words, frames = sim.shape
    others = [("f", k) for k in range(frames) if k != i] + [("w", k) for k in range(words) if k != j]
    total = 0.0
    for bits in itertools.product([False, True], repeat=len(others)):
        def v(with_i: bool, with_j: bool, bits: tuple = bits) -> float:
            f = np.zeros(frames, bool)
            w = np.zeros(words, bool)
            for (kind, k), b in zip(others, bits):
                (f if kind == "f" else w)[k] = b
            f[i], w[j] = with_i, with_j
            return float(hbi_value(sim, f[None], w[None])[0])
        total += v(True, True) - v(True, False) - v(False, True) + v(False, False)
    return total / 2 ** len(others)


def test_interaction_equals_an_exact_enumeration_and_sampling_agrees():
    features = _features(frames=3, words=3, seed=1)
    exact = video_text_game(features, level=0, exact=True)
    assert exact.exact and exact.cross.shape == (3, 3) and not exact.cross_stderr.any()
    brute = np.array([[_brute_force_interaction(exact.similarity, i, j) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(exact.cross, brute, atol=1e-12)
    assert np.abs(brute).max() > 1e-3  # not a trivially zero game
    sampled = video_text_game(features, level=0, exact=False, samples=8000, seed=4)
    assert not sampled.exact and (sampled.cross_stderr > 0).all()
    assert (np.abs(sampled.cross - exact.cross) < 4 * sampled.cross_stderr + 1e-9).all()


@pytest.mark.parametrize("frames, words", [(12, 32), (12, 9), (5, 1)])
def test_groups_are_partitions_at_hbis_ratios(frames, words):
    features = _features(frames, words, seed=2)
    for level, (f_groups, w_groups) in enumerate([(frames, words), (math.ceil(frames / 4), math.ceil(words / 4)),
                                                  (math.ceil(math.ceil(frames / 4) / 2), math.ceil(math.ceil(words / 4) / 2))]):
        result = video_text_game(features, level=level, samples=64)
        for groups, count in ((result.frame_groups, f_groups), (result.word_groups, w_groups)):
            assert groups.shape == ((frames,) if groups is result.frame_groups else (words,))
            assert sorted(set(groups.tolist())) == list(range(count))  # every player in one group, none empty
        assert result.cross.shape == result.cross_stderr.shape == (f_groups, w_groups)
        assert result.similarity.shape == (w_groups, f_groups)
    assert (frames, words) != (12, 32) or video_text_game(features, level=2).exact  # 2 + 4 players: exact


def test_a_group_embedding_is_the_mean_of_its_members():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.2], [5.0, 5.0], [5.1, 5.05], [5.2, 4.9], [4.9, 5.3], [0.3, 0.1]])
    assignment, feats = grouped(x, 1)  # ceil(8 / 4) = 2 groups: the two clumps
    assert assignment.tolist() == [0, 0, 0, 1, 1, 1, 1, 0]
    torch.testing.assert_close(feats.float(), torch.stack([x[assignment == 0].mean(0), x[assignment == 1].mean(0)]))


def test_level_out_of_range_is_refused():
    with pytest.raises(ValueError, match="level"):
        video_text_game(_features(4, 2), level=3)


def test_frame_word_features_per_frame_and_per_word(clip, clip_tokenizer):
    import tomviz

    loaded = tomviz.load(clip)
    frames, _ = square_clip(frames=3, side=32)
    feats = frame_word_features(loaded, frames, "a cat", tokenizer=clip_tokenizer)
    assert feats.word_names == ["a", "cat"] and feats.frames.shape == (3, 16) and feats.words.shape == (2, 16)
    from tomviz.models.frames import frame_pixels

    with torch.no_grad():
        one = clip.get_image_features(pixel_values=frame_pixels(frames[1:2], loaded.image_spec)).pooler_output
        ids = clip_tokenizer("a cat", return_tensors="pt")
        tokens = clip.text_projection(clip.text_model(**ids).last_hidden_state)[0]  # [<s> a c a t </s>]
    torch.testing.assert_close(feats.frames[1], one[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats.words[1], tokens[2:5].mean(0), atol=1e-5, rtol=1e-5)  # "cat" = c a t</w>


def test_video_hbi_api_shapes_and_picture(clip, clip_tokenizer):
    frames, _ = square_clip(frames=12, side=32, cut_at=6)
    session = score_analysis.video_hbi(clip, list(frames), "a cat on a mat", tokenizer=clip_tokenizer, frames=12)
    r = session.result
    assert r.level == 1 and r.exact and r.words == ["a", "cat", "on", "a", "mat"]
    assert r.frame_groups.shape == (12,) and r.num_frame_groups == 3 and r.num_word_groups == 2
    assert r.cross.shape == r.cross_stderr.shape == (3, 2)
    assert len(r.frame_group_names()) == 3 and len(r.word_group_names()) == 2
    assert isinstance(session.picture, Image.Image) and session.video.num_frames == 12
    with pytest.raises(ValueError, match="frames must be"):
        score_analysis.video_hbi(clip, list(frames), "a cat", tokenizer=clip_tokenizer, frames=64)
    with pytest.raises(ValueError, match="samples must be"):
        score_analysis.video_hbi(clip, list(frames), "a cat", tokenizer=clip_tokenizer, samples=10**6)
    with pytest.raises(ValueError, match="empty"):
        score_analysis.video_hbi(clip, list(frames), "   ", tokenizer=clip_tokenizer)


XCLIP_TEXT = dict(vocab_size=64, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def test_xclip_plays_its_own_frame_count(clip_tokenizer):
    from tests import tiny
    from tomviz.models.xclip import load_video_text

    model = tiny.xclip(frames=4, text=XCLIP_TEXT, seed=5)
    loaded = load_video_text(model)
    loaded.tokenizer = clip_tokenizer
    frames, _ = square_clip(frames=10, side=32)
    session = score_analysis.video_hbi(loaded, list(frames), "a cat", frames=10, level=0)
    assert session.video.num_frames == 4 and session.result.cross.shape == (4, 2)  # 10 sampled → X-CLIP's 4
    feats = frame_word_features(loaded, session.video.frames, "a cat")
    with torch.no_grad():  # the MIT's per-frame outputs average to X-CLIP's own video embedding
        from tomviz.models.frames import frame_pixels

        video = model.get_video_features(pixel_values=frame_pixels(session.video.frames, loaded.image_spec)[None]).pooler_output
    torch.testing.assert_close(feats.frames.mean(0), video[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="plays exactly 4 frames"):
        frame_word_features(loaded, frames[:3], "a cat")


def test_an_xclip_folder_loads_through_the_hub_policy(tmp_path, clip_tokenizer):
    import json

    from tests import tiny
    from tomviz.models.xclip import LoadedXCLIP, load_video_text

    tiny.xclip(frames=4, text=XCLIP_TEXT, seed=5).save_pretrained(tmp_path)  # safetensors
    clip_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    loaded = load_video_text(str(tmp_path))
    assert isinstance(loaded, LoadedXCLIP) and loaded.num_frames == 4 and loaded.image_spec.size == (32, 32)
    assert load_video_text(str(tmp_path)) is loaded  # cached
    with pytest.raises(tomviz.ModelLoadError):  # a folder named from the web is refused
        load_video_text(str(tmp_path), untrusted=True)
