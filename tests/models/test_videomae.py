"""VideoMAE: ToMe over space-time tokens inside the encoder, on a tiny random VideoMAE (4 frames of 32², 32 tokens)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import tomviz
from tests import tiny
from tomviz.inputs.image import ImageSpec
from tomviz.merge import get_method
from tomviz.merge.engine import MergeConfig
from tomviz.models import patching
from tomviz.models.videomae import clip_pixels, sample_to

TOKENS = 32  # 2 time steps x 4 x 4 patches


def pixels(seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def run(model, x, r):
    config = MergeConfig(method=get_method("tome"), r=r, trace=True)
    with torch.inference_mode(), patching.new_state(model, config) as state:
        out = model(pixel_values=x)
    return out, state


@pytest.mark.parametrize("classifier", [False, 3])
def test_r0_equals_the_unpatched_model(classifier):
    model = tiny.videomae(classifier=classifier, seed=0)
    x = pixels(1, batch=2)
    with torch.inference_mode():
        reference = model(pixel_values=x)
    out, state = run(model, x, 0)
    name = "logits" if classifier else "last_hidden_state"
    assert torch.allclose(getattr(out, name), getattr(reference, name), atol=1e-4)
    assert state.trace().token_counts() == [TOKENS] * 5
    patching.remove(model)
    with torch.inference_mode():
        assert torch.equal(getattr(model(pixel_values=x), name), getattr(reference, name))


def test_merging_changes_the_output_and_follows_the_schedule():
    model = tiny.videomae(seed=0)
    x = pixels(2)
    with torch.inference_mode():
        reference = model(pixel_values=x).last_hidden_state
    out, state = run(model, x, 5)
    trace = state.trace()
    assert trace.token_counts() == [32, 27, 22, 17, 12]
    assert out.last_hidden_state.shape == (1, 12, 32)
    assert not torch.allclose(out.last_hidden_state.mean(1), reference.mean(1), atol=1e-3)
    for layer in range(trace.num_layers):  # each layer: a partition of the 32 input tokens into its groups
        groups, sizes = trace.groups(layer), trace.sizes(layer)
        kept = trace.token_counts()[layer + 1]
        assert groups.shape == (TOKENS,) and groups.min() == 0 and groups.max() == kept - 1
        assert np.array_equal(np.bincount(groups, minlength=kept), sizes.astype(int))
        assert sizes.sum() == TOKENS


def test_the_classifier_pools_by_size():
    model = tiny.videomae(classifier=3, seed=0)
    x = pixels(3)
    patching.apply(model)  # the pooling hooks first: the test's hook below sees what fc_norm gets
    captured = {}
    handle = model.fc_norm.register_forward_pre_hook(lambda m, args: captured.update(mean=args[0]))
    try:
        _, state = run(model, x, 5)
    finally:
        handle.remove()
    tokens, sizes = state.final_tokens, state.sizes  # [1, 12, C], [1, 12, 1]
    assert not torch.allclose(tokens.mean(1), captured["mean"], atol=1e-4), "merged tokens must not count alike"
    weighted = (tokens * sizes).sum(1) / sizes.sum(1)
    assert torch.allclose(captured["mean"], weighted, atol=1e-5)
    # r = 0: the size-weighted mean is the plain mean of the unmerged model's tokens
    with torch.inference_mode():
        plain = model.videomae(pixel_values=x).last_hidden_state.mean(1)
    captured.clear()
    handle = model.fc_norm.register_forward_pre_hook(lambda m, args: captured.update(mean=args[0]))
    try:
        run(model, x, 0)
    finally:
        handle.remove()
    assert torch.allclose(captured["mean"], plain, atol=1e-5)


def test_inspect_a_clip_traces_time_steps_rows_and_cols():
    model = tiny.videomae(classifier=3, seed=0)
    frames = np.random.default_rng(0).integers(0, 256, (6, 40, 50, 3), dtype=np.uint8)
    result = tomviz.inspect(model, frames, ratio=0.5)
    trace = result.trace
    assert trace.frame_grid == (2, 4, 4)
    assert trace.num_protected == 0
    assert trace.token_counts()[0] == TOKENS and trace.token_counts()[-1] == TOKENS // 2
    assert result.outputs.logits.shape == (1, 3)
    unmerged = tomviz.inspect(model, frames, ratio=0.0)
    with torch.inference_mode():
        direct = model(pixel_values=clip_pixels(sample_to(frames, 4), ImageSpec((32, 32), resample=Image.Resampling.BILINEAR))).logits
    assert torch.allclose(unmerged.outputs.logits, direct, atol=1e-4)


def test_preprocessing_resizes_the_short_side_crops_and_normalises():
    frame = np.zeros((1, 20, 40, 3), dtype=np.uint8)
    frame[0, :, 16:24] = 255  # a white bar in the middle of the wide frame: it survives the centre crop
    out = clip_pixels(frame, ImageSpec((10, 10), resample=Image.Resampling.BILINEAR))
    assert out.shape == (1, 1, 3, 10, 10)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(out[0, 0, :, 0, 0], -mean / std, atol=1e-5)  # black corner
    assert torch.allclose(out[0, 0, :, 5, 5], (1 - mean) / std, atol=1e-5)  # the bar, at the centre
    assert sample_to(np.arange(3)[:, None, None, None], 4)[:, 0, 0, 0].tolist() == [0, 1, 1, 2]


def test_a_clip_file_and_a_saved_folder(tmp_path):
    from tests.inputs.clips import square_clip
    from tests.inputs.test_video import write_clip

    frames, _ = square_clip(frames=6, side=32)
    write_clip(tmp_path / "clip.mp4", frames)
    tiny.videomae(classifier=["walk", "run"], seed=0).save_pretrained(tmp_path / "model")
    processor = {"do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32},
                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2}
    (tmp_path / "model" / "preprocessor_config.json").write_text(json.dumps(processor))
    loaded = tomviz.load(str(tmp_path / "model"))
    assert loaded.adapter.family == "videomae" and loaded.labels == {0: "walk", 1: "run"}
    assert loaded.image_spec == ImageSpec((32, 32), (0.5,) * 3, (0.5,) * 3, Image.Resampling.BILINEAR)
    pixels_in = loaded.prepare(frames).tensors["pixel_values"]  # [1, 4, 3, 32, 32]: the folder's mean and std
    assert pixels_in.shape == (1, 4, 3, 32, 32) and pixels_in.min() >= -1 - 1e-6 and pixels_in.max() <= 1 + 1e-6
    result = tomviz.inspect(loaded, str(tmp_path / "clip.mp4"), ratio=0.25)
    assert result.trace.meta["input"] == "video" and result.trace.frame_grid == (2, 4, 4)
    assert result.trace.token_counts()[-1] == 24


def test_the_encoder_embedding_is_the_size_weighted_mean():
    """Fidelity compares a VideoMAEModel's mean of its final tokens, each weighted by its size."""
    adapter = patching.apply(tiny.videomae(seed=0)).adapter
    tokens = torch.randn(1, 3, 2)
    outputs = SimpleNamespace(last_hidden_state=tokens, logits=None)
    embedding, name = adapter.final_embeddings(outputs, torch.tensor([1.0, 2.0, 1.0]))
    assert name == "mean-pooled tokens"
    assert np.allclose(embedding, ((tokens[0, 0] + 2 * tokens[0, 1] + tokens[0, 2]) / 4).numpy()[None], atol=1e-6)


def test_fidelity_and_flops_through_the_shared_metrics():
    from tomviz.measure import compare, measured_forward

    loaded = tomviz.load(tiny.videomae(seed=0))
    inputs = loaded.prepare(pixels(5))
    tome = get_method("tome")
    base = measured_forward(loaded, inputs, MergeConfig(method=tome, r=0))
    same, merged = (measured_forward(loaded, inputs, MergeConfig(method=tome, r=r)) for r in (0, 5))
    assert compare(same, base)[0].agreement.cosine == pytest.approx(1.0, abs=1e-6)
    metrics = compare(merged, base)[0]
    assert (metrics.tokens_in, metrics.tokens_out) == (TOKENS, 12)
    assert metrics.gflops < metrics.base_gflops and metrics.agreement.cosine < 1 - 1e-6
