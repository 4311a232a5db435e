"""Token merging inside Qwen2-VL's and Qwen2.5-VL's vision encoder (tomviz/models/qwen2_vl_vision.py), on tiny random
models (tests/tiny.py: 4 px patches, 2 x 2 merger; Qwen2.5-VL with windows of 16 px = 4 x 4 patches in its first
block and full attention in its second).

Transformers 5.24 defines the tower (``models/qwen2_vl/modeling_qwen2_vl.py``, ``models/qwen2_5_vl/modeling_qwen2_5_vl.py``):
attention within each image (``cu_seqlens``) and, in Qwen2.5-VL's windowed blocks, within each window; the merger
joins each 2 x 2 block of patches, so it needs every patch back (merge, compute, unmerge).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import tiny
from tomviz import vlm
from tomviz.merge.engine import MergeConfig
from tomviz.merge.request import MergeRequest
from tomviz.models.qwen2_vl_vision import tower_layout
from tomviz.models.vlm import encoder_state, wrap

QUESTION = "what is in this image ?"


@pytest.fixture(scope="module", params=["2", "2.5"])
def loaded(request):
    model, processor = tiny.qwen2_vl(request.param, vision_layers=3, seed=0)
    return wrap(f"qwen{request.param}", model, processor)


@pytest.fixture(scope="module")
def inputs(loaded):
    return vlm.prepare(loaded, tiny.photo(40), QUESTION)


def _tower(loaded, config: MergeConfig, pixels: torch.Tensor, grid: torch.Tensor):
    """(the tower's output: merger tokens ``[V, D]``, patch states ``[N0, C]``; the encoder's merge state)."""
    state = encoder_state(loaded, config, {}, unmerge=True)
    with torch.inference_mode(), state:
        out = loaded.vision(pixels, grid_thw=grid)
    return out, state


def _two_images(loaded):
    batch = loaded.processor.image_processor([tiny.photo(40, seed=1), tiny.photo(48, seed=2).resize((48, 32))],
                                             return_tensors="pt")
    return batch["pixel_values"], batch["image_grid_thw"]


def test_no_merging_equals_the_unpatched_model(loaded, inputs):
    """r = 0: the logits equal the unpatched model's; with a trace the adapted block forward runs on every block
    (windows, rotary) and still gives the tower's own output."""
    model, _ = tiny.qwen2_vl("2.5" if loaded.name == "qwen2.5" else "2", vision_layers=3, seed=0)
    with torch.inference_mode():
        reference = model(**inputs.tensors).logits[0]
        out = loaded.model(**inputs.tensors).logits[0]
        prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction("encoder", "tome", 0.0))
    assert (out - reference).abs().max() < 1e-4
    assert (vlm.generate(loaded, prefill, max_new_tokens=2).first_logits - reference[-1]).abs().max() < 1e-4
    pixels, grid = _two_images(loaded)
    with torch.inference_mode():
        plain = model.model.visual(pixels, grid_thw=grid)
    traced, state = _tower(loaded, MergeRequest(method="tome", r=0).config(trace=True), pixels, grid)
    assert len(state.layers) == 3  # the adapted forward ran in every block
    assert (traced.pooler_output - plain.pooler_output).abs().max() < 1e-4
    assert (traced.last_hidden_state - plain.last_hidden_state).abs().max() < 1e-4


@pytest.mark.parametrize("method", ["tome", "pitome", "dtome", "random"])
def test_traces_are_partitions_within_images_and_windows(loaded, method):
    """Two images in one call: every layer's trace maps each patch to one group, the groups' sizes add up to the
    patches, and no group holds patches of two images, or (Qwen2.5-VL) of two windows, in any block."""
    pixels, grid = _two_images(loaded)
    config = MergeRequest(method=method, ratio=0.6).config(trace=True)
    out, state = _tower(loaded, config, pixels, grid)
    layout = tower_layout(loaded.vision, grid)
    num_patches = int(grid.prod(-1).sum())
    assert out.last_hidden_state.shape[0] == num_patches  # every patch back before the merger
    assert out.pooler_output.shape[0] == num_patches // 4
    counts = [layer.num_tokens for layer in state.layers]
    assert counts[-1] < num_patches and counts == sorted(counts, reverse=True)
    for layer in state.layers:
        source = torch.as_tensor(layer.source).long()
        assert source.numel() == num_patches and bool((source >= 0).all())
        assert torch.equal(torch.unique(source), torch.arange(layer.num_tokens))
        assert np.isclose(layer.sizes.sum(), num_patches)
        for ids in (layout.images, layout.windows):
            per_group = torch.zeros(layer.num_tokens, dtype=torch.long).scatter_reduce(0, source, ids, "amax",
                                                                                        include_self=False)
            assert torch.equal(per_group[source], ids)  # each group inside one image / window
    if loaded.name == "qwen2.5":
        assert int(layout.windows.max()) + 1 > int(layout.images.max()) + 1  # the windows are finer than the images


def test_merged_tokens_keep_their_destinations_position(loaded, inputs):
    """Each token stands at a patch of its own group; after one ToMe layer, the patches that did not merge away
    (so a merged pair stands at its destination, whose rotary position and window it keeps)."""
    pixels, grid = inputs.tensors["pixel_values"], inputs.tensors["image_grid_thw"]
    _, state = _tower(loaded, MergeRequest(method="tome", r=[8, 0, 0]).config(trace=True), pixels, grid)
    first = state.layers[0]
    anchors = state.anchors[0]
    source = torch.as_tensor(first.source).long()
    assert torch.equal(source[anchors], torch.arange(anchors.numel()))  # a member of the group it stands for
    stayed = sorted(set(range(source.numel())) - set(first.edges_src.tolist()))
    assert sorted(anchors.tolist()) == stayed
    assert torch.equal(anchors[source[torch.as_tensor(first.edges_src).long()]], torch.as_tensor(first.edges_dst).long())
    _, deeper = _tower(loaded, MergeRequest(method="tome", r=[8, 4, 0]).config(trace=True), pixels, grid)
    final = torch.as_tensor(deeper.layers[-1].source).long()
    assert torch.equal(final[deeper.anchors[0]], torch.arange(deeper.anchors.shape[1]))


def test_llm_gets_every_token_and_answers(loaded, inputs):
    """The LLM receives as many visual tokens as without encoder merging (the unmerge restores the grid), and the
    answer is a valid decode; the features differ from the unmerged ones."""
    reference = vlm.build_prefill(loaded, inputs, vlm.Reduction())
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction("encoder", "tome", 0.5))
    assert prefill.embeds.shape == reference.embeds.shape and int(prefill.visual.sum()) == 16
    assert not torch.allclose(prefill.embeds, reference.embeds)
    encoder = prefill.stages["encoder"]
    assert encoder.num_input_tokens == 64 and encoder.layers[-1].num_tokens == 32
    generated = vlm.generate(loaded, prefill, max_new_tokens=3)
    assert len(generated.tokens) >= 1
    import tomviz

    res = tomviz.inspect(loaded, (tiny.photo(40), QUESTION), ratio=0.5, method="tome", place="encoder", max_new_tokens=3)
    assert res.token_counts["visual"] == 16 and res.answer is not None


@pytest.mark.parametrize("reduction", [vlm.Reduction("encoder", "evit", 0.5), vlm.Reduction("encoder", "hiprune", 0.5),
                                       vlm.Reduction("boundary", "hiprune", 0.5)], ids=["evit", "hiprune", "boundary"])
def test_methods_that_read_the_encoders_attention_say_so(loaded, inputs, reduction):
    with pytest.raises(ValueError, match="reads the vision encoder's attention.*windowed and rotated"):
        vlm.build_prefill(loaded, inputs, reduction)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding by its definition: ``x cos + rotate_half(x) sin``; x ``[N, H, d]``, cos/sin ``[N, d]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def test_block_after_a_merge_equals_an_eager_reference(loaded, inputs):
    """Block 1 after ToMe merged 8 pairs in block 0, recomputed by hand: each token at the rotary position and
    window of the patch it stands at (the pair's destination, read from the trace's edges), attention within
    those windows with ``log size`` added to the logits (proportional attention), softmax, MLP."""
    pixels, grid = inputs.tensors["pixel_values"], inputs.tensors["image_grid_thw"]
    seen = {}
    hook = loaded.vision.blocks[1].register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    try:
        config = MergeRequest(method="tome", r=[8, 0, 0]).config(trace=True, keep_hidden=True)
        _, state = _tower(loaded, config, pixels, grid)
    finally:
        hook.remove()
    (x, sizes), (out, _) = state.hidden[0], state.hidden[1]  # block 0's output [1, 56, C], block 1's
    first = state.layers[0]
    source = torch.as_tensor(first.source).long()
    stands_at = torch.empty(x.shape[1], dtype=torch.long)
    stayed = torch.ones(source.numel(), dtype=torch.bool)
    stayed[torch.as_tensor(first.edges_src).long()] = False
    stands_at[source[stayed]] = torch.arange(source.numel())[stayed]
    cos, sin = (t[stands_at] for t in seen["position_embeddings"])
    bounds = seen["cu_seqlens"].long()
    windows = torch.repeat_interleave(torch.arange(bounds.numel() - 1), bounds.diff())[stands_at]
    block = loaded.vision.blocks[1]
    heads = block.attn.num_heads
    with torch.inference_mode():
        h = block.norm1(x[0])
        q, k, v = block.attn.qkv(h).reshape(h.shape[0], 3, heads, -1).unbind(1)  # [N, H, d] each
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        logits = torch.einsum("nhd,mhd->hnm", q, k) * block.attn.scaling + sizes[0, :, 0].log()  # [H, N, N]
        logits = logits.masked_fill(windows[:, None] != windows[None, :], float("-inf"))
        attended = torch.einsum("hnm,mhd->nhd", logits.softmax(-1), v).reshape(h.shape[0], -1)
        y = x[0] + block.attn.proj(attended)
        expected = y + block.mlp(block.norm2(y))
    assert out.shape == (1, 56, x.shape[-1])
    assert (out[0] - expected).abs().max() < 1e-4


def test_patch_order_follows_the_rotary_positions(loaded):
    """``patch_order`` puts patch ``(r, c)`` of each image (row-major) at the tower token whose rotary embedding
    is that of ``(r, c)``: ``cos`` of ``[r θ, c θ, r θ, c θ]`` with the tower's frequencies θ."""
    from tomviz.models.qwen2_vl_vision import patch_order

    pixels, grid = _two_images(loaded)
    seen = {}
    hook = loaded.vision.blocks[0].register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    try:
        with torch.inference_mode():
            loaded.vision(pixels, grid_thw=grid)
    finally:
        hook.remove()
    cos = seen["position_embeddings"][0]  # [N0, d] in the tower's order
    theta = loaded.vision.rotary_pos_emb.inv_freq
    rows = torch.cat([torch.arange(h).repeat_interleave(w) for _, h, w in grid.tolist()]).float()
    cols = torch.cat([torch.arange(w).repeat(h) for _, h, w in grid.tolist()]).float()
    half = torch.cat([rows[:, None] * theta, cols[:, None] * theta], dim=-1)
    assert torch.allclose(cos[patch_order(loaded.vision, grid)], torch.cat([half, half], dim=-1).cos(), atol=1e-6)


def test_encoder_stage_is_row_major(loaded, inputs):
    """The encoder stage's trace is over the 8 x 8 patches row-major (``meta["patch_grid"]``), a partition; in Qwen2.5-VL each
    group lies inside one window of 4 x 4 patches, ``(r // 4, c // 4)``."""
    prefill = vlm.build_prefill(loaded, inputs, vlm.Reduction("encoder", "tome", 0.5))
    trace = prefill.stages["encoder"]
    assert trace.meta["patch_grid"] == [8, 8]
    window = torch.tensor([(r // 4) * 2 + c // 4 for r in range(8) for c in range(8)])
    for layer in trace.layers:
        source = torch.as_tensor(layer.source).long()
        assert torch.equal(torch.unique(source), torch.arange(layer.num_tokens))
        if loaded.name == "qwen2.5":
            per_group = torch.zeros(layer.num_tokens, dtype=torch.long).scatter_reduce(0, source, window, "amax",
                                                                                        include_self=False)
            assert torch.equal(per_group[source], window)


def test_concurrent_calls_keep_their_own_layout_and_ratio(loaded, inputs):
    """Two threads merging at different ratios in the one shared tower (each call's layout and merge state live
    in its own context) give what each gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    reductions = [vlm.Reduction("encoder", "tome", ratio) for ratio in (0.25, 0.5, 0.0, 0.5, 0.25, 0.0)]
    alone = [vlm.build_prefill(loaded, inputs, red).embeds for red in reductions]
    with ThreadPoolExecutor(max_workers=3) as pool:
        together = list(pool.map(lambda red: vlm.build_prefill(loaded, inputs, red).embeds, reductions))
    for mine, theirs in zip(together, alone):
        assert (mine - theirs).abs().max() < 1e-6
    assert (alone[0] - alone[1]).abs().max() > 1e-3
