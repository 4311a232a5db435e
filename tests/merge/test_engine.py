"""tomviz/merge/engine.py driven by hand, as an adapter drives it (no model): the per-call state in its
context variable, the schedule, merging after attention, the attention bias, padding, Resume and the trace."""
from __future__ import annotations

import math

import pytest
import torch

from tests.merge.helpers import unit
from tomviz.merge import get_method
from tomviz.merge.engine import MergeConfig, MergeState, Resume, current_state
from tomviz.merge.tome import ToMe

# ToMe's hand example (tests/merge/test_tome.py): CLS, then A = {0, 2, 4}, B = {1, 3, 5}; with r=1 token 2 merges into 5
METRIC = unit([1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.9, 0.1, 0], [0.5, 0, 0.5], [0, 0.1, 1])  # [1, 6, 3]
X = torch.arange(6, dtype=torch.float32).view(1, 6, 1)  # [1, 6, 1] token i holds the value i


def _state(**config) -> MergeState:
    return MergeState(MergeConfig(method=config.pop("method", ToMe()), **config), num_protected=1, num_layers=2)


def _layer(state: MergeState, layer: int, x: torch.Tensor, incoming=None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One block as an adapter runs it: the attention mask, then the merge given the keys (1 head); (mask, tokens out)."""
    mask = state.attention_mask(incoming, x)
    keys = METRIC[:, : x.shape[1]].expand(x.shape[0], -1, -1)
    return mask, state.after_attention(layer, x, keys, None, num_heads=1)


def test_the_state_is_per_call_and_nests():
    outer, inner = _state(r=1), _state(r=0)
    assert current_state() is None  # outside a forward, patched blocks run their original code
    with outer:
        assert current_state() is outer
        with inner:
            assert current_state() is inner
        assert current_state() is outer
    assert current_state() is None


def test_unmerged_config_keeps_the_method_flags_and_extra():
    config = MergeConfig(method=get_method("pitome"), ratio=0.5, prop_attn=False, trace=True, keep_hidden=True,
                         extra={"word_ids": [0, 1]})
    plain = MergeConfig.unmerged(config, cls_attention=False)
    assert (plain.r, plain.ratio, plain.trace, plain.keep_hidden, plain.resume) == (0, None, False, False, None)
    assert plain.method is config.method and plain.prop_attn is False and plain.extra == {"word_ids": [0, 1]}
    assert plain.cls_attention is False and config.ratio == 0.5  # the original is not changed
    default = MergeConfig.unmerged()
    assert isinstance(default.method, ToMe) and default.r == 0


def test_merge_after_attention_by_hand():
    state = _state(r=1, trace=True)
    mask, x = _layer(state, 0, X)
    assert mask is None and state.schedule == [1, 1]  # nothing merged yet: the model's own (absent) mask
    assert x[0, :, 0].tolist() == [0, 4, 1, 3, 3.5] and state.sizes[0, :, 0].tolist() == [1, 1, 1, 1, 2]
    bias, x = _layer(state, 1, x)
    # from now on an additive [B, 1, 1, N] bias: log(size) for proportional attention
    assert bias.shape == (1, 1, 1, 5)
    assert bias[0, 0, 0].tolist() == pytest.approx([0, 0, 0, 0, math.log(2)])
    assert x.shape == (1, 4, 1) and state.removed == [1, 1]
    trace = state.trace()
    assert trace.token_counts() == [6, 5, 4]
    assert trace.groups(0).tolist() == [0, 2, 4, 3, 1, 4]  # token 2 joined token 5's group
    assert trace.sizes(0).tolist() == [1, 1, 1, 1, 2]
    assert trace.layers[0].edges_src.tolist() == [2] and trace.layers[0].edges_dst.tolist() == [5]
    assert trace.meta["schedule"] == [1, 1] and trace.meta["method"] == "tome" and trace.meta["num_protected"] == 1


def test_without_proportional_attention_the_bias_is_zero():
    state = _state(r=1, prop_attn=False)
    _layer(state, 0, X)
    bias = state.attention_mask(None, torch.zeros(1, 5, 1))
    assert bias.shape == (1, 1, 1, 5) and not bias.any()


def _begun(state: MergeState) -> MergeState:
    state.begin(torch.zeros(1, 6, 1), None)
    return state


def test_nothing_to_do_runs_the_original_block():
    state = _begun(_state(r=[0, 1]))
    assert state.passthrough(0) and not state.passthrough(1)  # layer 1 merges


@pytest.mark.parametrize("flags", [{"trace": True}, {"keep_hidden": True}])
def test_recording_runs_every_block(flags):
    assert not _begun(_state(r=0, **flags)).passthrough(0)


def test_padding_is_read_from_the_model_mask_and_masked_after_merging():
    keep = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])  # the second input is 4 tokens + 2 of padding
    incoming = torch.zeros(2, 1, 6, 6).masked_fill(~keep[:, None, None, :], torch.finfo(torch.float32).min)
    state = _state(r=1)
    mask, x = _layer(state, 0, X.expand(2, -1, -1), incoming)
    assert mask is incoming  # untouched until something merged
    # padding merges only with padding: here the two padded tokens became one, the 4 real ones stayed apart
    assert state.valid.tolist() == [[True] * 5, [True] * 4 + [False]]
    bias = state.attention_mask(incoming, x)
    assert (bias[1, 0, 0] == torch.finfo(torch.float32).min).tolist() == [False] * 4 + [True]
    assert (bias[0] > -1).all()
    weights = state.token_weights(x)  # sizes, 0 on padding
    assert weights[1, :, 0].tolist() == [s if v else 0 for s, v in zip(state.sizes[1, :, 0].tolist(), state.valid[1].tolist())]
    assert weights[1, :, 0].sum() == 4 and weights[0, :, 0].sum() == 6


def test_no_padding_means_no_validity():
    state = _begun(_state(r=1))
    assert state.valid is None
    state = _state(r=1)
    state.begin(torch.zeros(1, 6, 1), torch.zeros(1, 1, 6, 6))  # an all-zero additive mask: nothing padded
    assert state.valid is None


def test_resume_skips_to_the_stored_tokens_of_each_coalition():
    hidden = torch.arange(12, dtype=torch.float32).view(1, 4, 3)  # [1, N, C] block 1's output
    present = torch.tensor([[True, True, False, True], [True, False, True, True]])  # [M, N]
    state = MergeState(MergeConfig(method=ToMe(), r=0, resume=Resume(1, hidden, None, present)), num_protected=1, num_layers=3)
    earlier = torch.zeros(1, 9, 3)
    assert state.skip_block(0, earlier) is earlier  # before the resumed layer: skipped, input passed on
    out = state.skip_block(1, earlier)
    assert out.shape == (2, 4, 3) and torch.equal(out[1], hidden[0])  # the stored tokens, once per coalition
    assert state.schedule == [0, 0, 0] and state.sizes.shape == (2, 4, 1) and torch.equal(state.valid, present)
    assert state.skip_block(2, out) is None  # later blocks run
    assert state.token_weights(out)[:, :, 0].tolist() == [[1, 1, 0, 1], [1, 0, 1, 1]]


def test_keep_hidden_stores_each_block_output():
    state = _state(r=1, keep_hidden=True)
    _, x = _layer(state, 0, X)
    state.block_done(x)
    (kept, sizes), = state.hidden
    assert torch.equal(kept, x[:1]) and sizes[0, :, 0].tolist() == [1, 1, 1, 1, 2]


class _BadSchedule(ToMe):
    def schedule_for(self, requested, num_tokens, num_protected, num_layers):
        return [1]  # one entry for two layers


class _Greedy(ToMe):
    def schedule_for(self, requested, num_tokens, num_protected, num_layers):
        return [num_tokens, 0]  # more than there is


@pytest.mark.parametrize("method, message", [(_BadSchedule(), r"schedule \[1\] for 2 layers"),
                                             (_Greedy(), "asks to remove 6 of 5 tokens")])
def test_a_method_schedule_is_checked(method, message):
    with pytest.raises(ValueError, match=message):
        _state(r=1, method=method).begin(X, None)
