"""A clip and a question through tiny random LLaVA-OneVision and SmolVLM: the boundary and inside-the-LLM stages."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests import tiny
from tests.inputs.clips import square_clip
from tomviz.merge.dycoke_cache import dycoke_cache_keep
from tomviz.merge.holitom_inner import holitom_keep_count
from tomviz.models import llm
from tomviz.models.vlm import wrap
from tomviz.vlm import VideoStages, ask_video, generate, teacher_forced
from tomviz.vlm.video import encode_clip, reduce_clip, stage_traces, video_prefill
from tomviz.vlm.video_inputs import prepare_video

QUESTION = "what is in this image ?"
FRAMES, _ = square_clip(frames=4, side=64, square=16, step=16)
STAGES = [
    VideoStages(boundary="holitom", boundary_ratio=0.5),
    VideoStages(boundary="dycoke", boundary_ratio=0.7),
    VideoStages(boundary="fastvid", boundary_ratio=0.5, boundary_options={"segments": 2}),
    VideoStages(boundary="framefusion", boundary_ratio=0.7),
    VideoStages(boundary="frame_drop", boundary_ratio=0.5),
    VideoStages(boundary="random", boundary_ratio=0.5),
    VideoStages(llm="fastv", llm_ratio=0.5, llm_layer=1),
    VideoStages(llm="holitom", llm_ratio=0.5, llm_layer=2),
    VideoStages(boundary="holitom", boundary_ratio=0.5, llm="holitom", llm_ratio=0.5, llm_layer=1),
]


@pytest.fixture(scope="module", params=["onevision", "smolvlm"])
def loaded(request):
    torch.manual_seed(0)
    model, processor = tiny.onevision(image_size=64) if request.param == "onevision" else tiny.smolvlm()
    model.config._attn_implementation = "eager"  # (the reference's attention probabilities; tomviz recomputes its own)
    return wrap(request.param, model, processor)


@pytest.fixture(scope="module")
def inputs(loaded):
    return prepare_video(loaded, list(FRAMES), QUESTION)


@pytest.fixture(scope="module")
def encoded(loaded, inputs):
    return encode_clip(loaded, inputs)


def _prefill(loaded, inputs, encoded, stages):
    return video_prefill(loaded, inputs, encoded, reduce_clip(encoded, stages), stages)


def test_layout(loaded, inputs, encoded):
    """OneVision: 8 x 8 patches pooled to 4 x 4 tokens a frame plus one newline; SmolVLM: 4 x 4 after the shuffle."""
    assert inputs.token_grid == (4, 4)
    assert tuple(encoded.tokens.shape[:2]) == (4, 16) and tuple(encoded.attention.shape) == (4, 16)
    marked = int((inputs.tensors["input_ids"][0] == inputs.token_id).sum())
    assert marked == 64 + (loaded.adapter.family == "llava_onevision")


def test_no_reduction_matches_unpatched(loaded, inputs, encoded):
    with torch.inference_mode():
        reference = loaded.model(**inputs.tensors).logits[0]  # transformers' own video / multi-image path
    prefill = _prefill(loaded, inputs, encoded, VideoStages())
    with torch.inference_mode(), prefill.llm_state():
        ours = loaded.model(inputs_embeds=prefill.embeds).logits[0]
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() < 1e-4
    expected = loaded.model.generate(**inputs.tensors, max_new_tokens=4, do_sample=False)
    generated = generate(loaded, prefill, max_new_tokens=4)
    assert generated.tokens == expected[0, inputs.tensors["input_ids"].shape[1]:].tolist()[: len(generated.tokens)]


def _check_partition(trace):
    assert trace.frame_grid == (4, 4, 4)
    for layer in trace.layers:
        source = layer.source
        assert source.shape == (64,) and source.min() >= -1 and source.max() < layer.num_tokens
        np.testing.assert_array_equal(np.bincount(source[source >= 0], minlength=layer.num_tokens), layer.sizes)
        assert (layer.sizes > 0).all()


@pytest.mark.parametrize("stages", STAGES, ids=lambda s: f"{s.boundary}-{s.llm}")
def test_stages_counts_and_cached_decoding(loaded, inputs, encoded, stages):
    """Each stage's trace is a partition of the clip's tokens; the LLM receives the boundary trace's count and
    layers >= K hold the llm trace's; greedy decoding with the cache equals recomputing the whole sequence."""
    reduction = reduce_clip(encoded, stages)
    prefill = video_prefill(loaded, inputs, encoded, reduction, stages)
    lengths = []
    layers = loaded.language_model.layers
    hooks = [layer.register_forward_hook(lambda m, a, out: lengths.append(out.shape[1])) for layer in layers]
    try:
        generated = generate(loaded, prefill, max_new_tokens=5)
    finally:
        for hook in hooks:
            hook.remove()
    traces = stage_traces(loaded, inputs, reduction, stages, prefill, generated)
    for trace in traces.values():
        _check_partition(trace)
    text = int((~prefill.visual).sum())
    boundary = traces["boundary"].layers[-1].num_tokens
    assert int(prefill.visual.sum()) == boundary and lengths[0] == text + boundary
    if stages.llm != "none":
        inner = traces["llm"].layers[-1]
        assert lengths[stages.layer: len(layers)] == [text + inner.num_tokens] * (len(layers) - stages.layer)
        assert inner.num_tokens == max(1, holitom_keep_count(boundary, stages.llm_ratio))
        dropped_before = traces["boundary"].layers[-1].source < 0
        if stages.llm == "holitom":  # every token that reached the LLM joins a kept one
            np.testing.assert_array_equal(inner.source < 0, dropped_before)
        else:  # FastV drops the rest: whole boundary groups
            groups = traces["boundary"].layers[-1].source
            kept_groups = np.unique(groups[inner.source >= 0])
            assert len(kept_groups) == inner.num_tokens
            np.testing.assert_array_equal(inner.source >= 0, np.isin(groups, kept_groups))
    forced = teacher_forced(loaded, prefill, generated.tokens)
    assert (forced.first_logits - generated.first_logits).abs().max() < 1e-4
    answer = torch.tensor(generated.tokens)
    with torch.inference_mode():
        embeds = torch.cat([prefill.embeds, loaded.language_model.get_input_embeddings()(answer[None])], 1)
        fastv = None if prefill.fastv is None else replace(prefill.fastv, query=prefill.embeds.shape[1] - 1)
        with llm.LLMState(visual=torch.cat([prefill.visual, torch.zeros(len(answer), dtype=torch.bool)]), fastv=fastv):
            logits = loaded.model(inputs_embeds=embeds).logits[0]
    assert logits[-(len(answer) + 1):-1].argmax(-1).tolist() == generated.tokens


def test_holitom_inner_folds_and_fastv_drops(loaded, inputs, encoded):
    """Same kept tokens (the same attention, the same count); HoliTom's kept hidden states carry the dropped ones,
    so the logits differ from FastV's, and every token is in a group where FastV leaves the dropped out (-1)."""
    results = {}
    for method in ("fastv", "holitom"):
        stages = VideoStages(llm=method, llm_ratio=0.5, llm_layer=1)
        reduction = reduce_clip(encoded, stages)
        prefill = video_prefill(loaded, inputs, encoded, reduction, stages)
        generated = generate(loaded, prefill, max_new_tokens=1)
        results[method] = (generated, stage_traces(loaded, inputs, reduction, stages, prefill, generated)["llm"])
    (fastv, fastv_trace), (holitom, holitom_trace) = results["fastv"], results["holitom"]
    assert torch.equal(fastv.keep, holitom.keep)
    assert (fastv.first_logits - holitom.first_logits).abs().max() > 1e-4
    assert (fastv_trace.layers[-1].source == -1).sum() == 32 and (holitom_trace.layers[-1].source >= 0).all()


def test_dycoke_cache(loaded, inputs, encoded):
    """p = 0 keeps every token: the answer and logits of the unreduced run. p = 0.75: the first step (no previous
    pattern) attends to int(64 * 0.25) = 16 image tokens, chosen from layer l - 1's attention of the new token,
    which the unpatched model's eager attention gives on the prompt plus that token."""
    base = generate(loaded, _prefill(loaded, inputs, encoded, VideoStages()), max_new_tokens=4)
    none = generate(loaded, _prefill(loaded, inputs, encoded, VideoStages(llm="dycoke", llm_ratio=0.0, llm_layer=2)),
                    max_new_tokens=4)
    assert none.tokens == base.tokens and none.dycoke_steps[0].numel() == 64
    prefill = _prefill(loaded, inputs, encoded, VideoStages(llm="dycoke", llm_ratio=0.75, llm_layer=2))
    pruned = generate(loaded, prefill, max_new_tokens=3)
    assert pruned.dycoke_steps[0].numel() == 16
    first = torch.tensor([[base.tokens[0]]])
    with torch.inference_mode():
        embeds = torch.cat([prefill.embeds, loaded.language_model.get_input_embeddings()(first)], 1)
        out = loaded.model(inputs_embeds=embeds, output_attentions=True)
    attention = out.attentions[1][0].mean(0)[-1, : prefill.visual.shape[0]][prefill.visual]  # layer l - 1 = 1
    assert torch.equal(pruned.dycoke_steps[0], dycoke_cache_keep(attention, None, 0.75))


def test_ask_video(loaded):
    result = ask_video(loaded, list(FRAMES), QUESTION, method="holitom", ratio=0.5, max_new_tokens=3)
    assert result.token_counts["clip"] == 64 and result.token_counts["llm_input"] == result.trace.layers[-1].num_tokens
    assert isinstance(result.answer, str) and isinstance(result.reference_answer, str)
    summary = result.summary()
    assert summary["frame_grid"] == [4, 4, 4] and sum(summary["tokens_per_frame"]) == result.token_counts["llm_input"]
    with pytest.raises(ValueError, match="inside the LLM"):
        ask_video(loaded, list(FRAMES), QUESTION, method="tome", place="llm")
    with pytest.raises(ValueError, match="layer must be"):
        ask_video(loaded, list(FRAMES), QUESTION, method="holitom", place="llm")  # k = 18 in a 3-layer LLM
    with pytest.raises(ValueError, match="tempme merges inside the image encoder"):
        ask_video(loaded, list(FRAMES), QUESTION, method="tempme", ratio=0.5)


def test_inspect_and_cli_take_a_clip_and_a_question(tmp_path):
    """``tomviz.inspect(vlm, (frames, question))`` and ``inspect FOLDER --question ... --model SmolVLM-FOLDER``."""
    import json

    from PIL import Image

    import tomviz
    from tomviz.cli import main

    folder = tiny.saved_smolvlm(tmp_path / "model")
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, frame in enumerate(FRAMES):
        Image.fromarray(frame).save(frames / f"{t:03d}.png")
    result = tomviz.inspect(tomviz.load(str(folder)), (list(FRAMES), QUESTION), method="dycoke", ratio=0.7,
                            max_new_tokens=2)
    assert result.trace.frame_grid == (4, 4, 4) and result.token_counts["llm_input"] < 64
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="layer must be 1..2"):  # HoliTom's k = 18 in a 3-layer LLM: a clear error
        main(["inspect", str(frames), "--question", QUESTION, "--model", str(folder), "--frames", "4",
              "--method", "holitom", "--place", "llm", "--ratio", "0.5", "--out", str(out)])
    assert main(["inspect", str(frames), "--question", QUESTION, "--model", str(folder), "--frames", "4",
                 "--method", "fastv", "--place", "llm", "--fastv-layer", "1", "--ratio", "0.5",
                 "--max-new-tokens", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "answers.json").read_text())
    assert summary["token_counts"]["llm_after_k"] == 32 and summary["llm"] == "fastv"
    assert (out / "trace_llm.json").exists() and (out / "strip_llm.png").exists()


def test_dycoke_cached_decoding_equals_recomputation(loaded, inputs, encoded):
    """DyCoke's cached decoding equals one pass over the prompt and the answer whose layers >= l give each answer row
    the keys its own decoding step kept (the rows of the prompt and layers < l: plain causal)."""
    layer = 2
    prefill = _prefill(loaded, inputs, encoded, VideoStages(llm="dycoke", llm_ratio=0.75, llm_layer=layer))
    cached = []  # the logits of each call: the prefill's last row, then one per decoding step
    hook = loaded.model.lm_head.register_forward_hook(lambda m, a, out: cached.append(out[0, -1].clone()))
    try:
        generated = generate(loaded, prefill, max_new_tokens=4)
    finally:
        hook.remove()
    steps = generated.dycoke_steps  # step j feeds answer token j (at position length + j) and predicts token j + 1
    answer = torch.tensor(generated.tokens[:-1])  # the tokens fed back (the last one is only predicted)
    lm = loaded.language_model
    length = prefill.embeds.shape[1]
    with torch.inference_mode():
        hidden = torch.cat([prefill.embeds, lm.get_input_embeddings()(answer[None])], 1)  # [1, L + A, C]
        total = hidden.shape[1]
        positions = torch.arange(total)[None]
        causal = torch.full((total, total), torch.finfo(torch.float32).min).triu(1)
        pruned = causal.clone()
        visual = prefill.visual.nonzero()[:, 0]
        for j, kept in enumerate(steps):
            if kept is not None:
                left_out = visual[~torch.isin(torch.arange(visual.numel()), kept)]
                pruned[length + j, left_out] = torch.finfo(torch.float32).min  # the row of the token step j fed
        rotary = lm.rotary_emb(hidden, positions)

        def recompute(later: torch.Tensor) -> torch.Tensor:  # [A, vocab] the answer rows' logits
            x = hidden
            for index, block in enumerate(lm.layers):
                x = block(x, attention_mask=(causal if index < layer else later)[None, None], position_ids=positions,
                          position_embeddings=rotary)
                x = x[0] if isinstance(x, tuple) else x
            return loaded.model.lm_head(lm.norm(x))[0, length - 1:]

        ours, unpruned = recompute(pruned), recompute(causal)
    assert ours.argmax(-1).tolist() == generated.tokens
    assert (torch.stack(cached) - ours).abs().max() < 1e-4
    pruned_rows = [j + 1 for j, kept in enumerate(steps) if kept is not None]  # rows of ours: 0 is the prefill's
    assert pruned_rows and (ours[pruned_rows] - unpruned[pruned_rows]).abs().max() > 1e-3  # the masking mattered


def test_holitom_fold_inside_the_llm_is_the_rule(loaded, inputs, encoded):
    """Layer k's input holds, at the kept visual places, :func:`holitom_fold` of layer k - 1's output (the dropped
    tokens folded in), and the text as it came out of layer k - 1."""
    from tomviz.merge.holitom_inner import holitom_fold

    k = 2
    prefill = _prefill(loaded, inputs, encoded, VideoStages(llm="holitom", llm_ratio=0.5, llm_layer=k))
    seen = {}
    blocks = loaded.language_model.layers
    hooks = [blocks[k - 1].register_forward_hook(lambda m, a, out: seen.setdefault("out", out[0] if isinstance(out, tuple) else out)),
             blocks[k].input_layernorm.register_forward_pre_hook(lambda m, a: seen.setdefault("in", a[0]))]
    try:
        generated = generate(loaded, prefill, max_new_tokens=1)
    finally:
        for hook in hooks:
            hook.remove()
    keep = generated.keep  # the prefill positions layers >= k hold
    visual = prefill.visual.nonzero()[:, 0]
    kept = torch.searchsorted(visual, keep[prefill.visual[keep]])
    folded, dst = holitom_fold(seen["out"][0, visual], kept)
    torch.testing.assert_close(seen["in"][0][prefill.visual[keep]], folded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen["in"][0][~prefill.visual[keep]], seen["out"][0][keep[~prefill.visual[keep]]])
    assert torch.equal(dst, generated.folded)
