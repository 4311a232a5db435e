"""The per-forward merge state: applies a method layer by layer and records the trace.

No model knowledge: for each layer an adapter asks for the attention mask
(:meth:`MergeState.attention_mask`), then hands over, as arguments of
:meth:`MergeState.after_attention`, the hidden states after the attention residual
and the attention's key and query projections; the state returns the merged hidden
states. Nothing writes the state from outside.

A new :class:`MergeState` is made for every forward call and lives in a
``contextvars.ContextVar`` (:class:`~tomviz.merge.context.PerCallState`), so concurrent
calls on one shared model (several app users) never see each other's schedule or trace.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from tomviz.merge.base import LayerStep, MergeInputs, MergeMethod
from tomviz.merge.context import PerCallState
from tomviz.merge.plan import MergePlan
from tomviz.merge.schedule import resolve_schedule
from tomviz.merge.segments import plan_within_segments
from tomviz.merge.tome import ToMe
from tomviz.trace import LayerTrace, Trace


@dataclass
class MergeConfig:
    """How to merge, for one call. Passed per call, never stored on a shared model."""

    method: MergeMethod  # the merge method instance (tomviz.merge.get_method)
    r: int | tuple[int, int] | list[int] | None = None  # tokens removed per layer: int, (r, -1) or a list
    ratio: float | None = None  # or: fraction of the input tokens removed by the last layer (0..MAX_RATIO)
    schedule: str = "constant"  # how a ratio (or a plain int r) spreads over layers: "constant" | "decreasing"
    prop_attn: bool = True  # proportional attention: add log(size) to every attention logit
    trace: bool = False  # record a Trace (groups, sizes, edges, CLS attention)
    cls_attention: bool = True  # with trace: record CLS→token attention (mean over heads)
    cls_attention_heads: bool = False  # with trace: also keep it per head
    full_attention: bool = False  # with trace: record the full N×N attention (mean over heads)
    extra: dict[str, Any] = field(default_factory=dict)  # per-input side information for methods
    keep_hidden: bool = False  # keep every block's output tokens and sizes (for scores that resume a forward)
    resume: "Resume | None" = None  # start after a layer from stored tokens (see Resume)

    @classmethod
    def unmerged(cls, like: "MergeConfig | None" = None, **fields: Any) -> "MergeConfig":
        """The reference run: nothing removed (``r=0``), no trace, nothing kept or resumed.

        ``like``: keep its method, flags and ``extra`` (without it the method is ToMe, which does
        nothing at ``r=0``); ``fields`` set any other field.
        """
        if like is None:
            return cls(method=ToMe(), r=0, **fields)
        return replace(like, r=0, ratio=None, trace=False, keep_hidden=False, resume=None, **fields)


@dataclass
class Resume:
    """Run only the blocks after ``layer``, from stored tokens, for a batch of coalitions.

    The blocks up to ``layer`` are skipped (the model's embeddings still run once, on
    the original single input); block ``layer`` outputs ``hidden`` repeated M times
    with the absent tokens masked out of attention (like padding). Later blocks do
    not merge. Used by the Banzhaf scores: "the remaining layers with only the
    coalition's tokens present, sizes kept". The scores pass each coalition's present
    tokens compacted (``[M, k, C]``, padded and masked), which is faster than masking.
    """

    layer: int
    hidden: torch.Tensor  # [1, N, C] block ``layer``'s output, or [M, N, C]: one token set per coalition
    sizes: torch.Tensor | None  # [1 or M, N, 1] (None = ones)
    present: torch.Tensor  # [M, N] bool, the tokens present in each coalition


def current_state() -> "MergeState | None":
    """The merge state of this call (see :class:`~tomviz.merge.context.PerCallState`), or None."""
    return MergeState.current()


class MergeState(PerCallState, context="tomviz_merge_state"):
    """Token bookkeeping for one forward pass (batch B, N tokens now, N0 at the input). ``with state:`` makes
    it the current one for the patched blocks."""

    def __init__(self, config: MergeConfig, num_protected: int, num_layers: int, meta: dict[str, Any] | None = None):
        self.config = config
        self.num_protected = num_protected
        self.num_layers = num_layers
        self.meta = dict(meta or {})
        self.sizes: torch.Tensor | None = None  # [B, N, 1]; None until the first merge
        self.valid: torch.Tensor | None = None  # [B, N] bool; None = no padding
        self.source: torch.Tensor | None = None  # [B, N0] long (trace only)
        self.positions: torch.Tensor | None = None  # [B, N] long, smallest input position per token (if the method asks)
        # [B, N] long: the input token each token stands at (MergePlan.representatives: ToMe's destination), for a model
        # that gives merged tokens a position (Qwen2-VL's rotary); None until something merged (= the identity)
        self.anchors: torch.Tensor | None = None
        self.removed: list[int] = []  # tokens each layer actually removed
        self.layers: list[LayerTrace] = []
        self.final_tokens: torch.Tensor | None = None  # [B, N_L, C] the backbone's output (record_output), for size pooling
        self.hidden: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # keep_hidden: per block ([1, N_l, C], [1, N_l, 1])
        self.schedule: list[int] = []  # resolved when the first layer sees the input length
        self.steps: list[LayerStep] | None = None  # a method that joins the batch's frames (TempMe): per layer
        self._entering: tuple[int, int] | None = None  # (layer, tokens of the whole batch) entering it (with steps)
        self._span = 0  # with steps: input tokens per sequence (a frame's, times the frames joined so far)
        self.observed: set[int] = set()  # layers whose attention map the method keeps (MergeInputs.history)
        self.history: dict[int, torch.Tensor] = {}  # layer -> [B, N_l, N_l]
        self._started = False
        self._bias: torch.Tensor | None = None  # [B, 1, 1, N] additive bias in use

    @property
    def wants_cls_attention(self) -> bool:
        c = self.config
        return (c.trace and (c.cls_attention or c.cls_attention_heads)) or c.method.needs_cls_attention

    @property
    def wants_query(self) -> bool:
        return (self.config.trace and self.config.full_attention) or self.config.method.needs_attention

    # -- called by the patched blocks -----------------------------------------------------
    def skip_block(self, layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
        """With ``config.resume``: the output of a skipped block (None when the block must run)."""
        resume = self.config.resume
        if resume is None or layer > resume.layer:
            return None
        if layer < resume.layer:
            return hidden
        self._started = True
        self.schedule = [0] * self.num_layers
        batch = resume.present.shape[0]
        sizes = resume.sizes if resume.sizes is not None else resume.hidden.new_ones(*resume.hidden.shape[:2], 1)
        self.sizes = sizes.expand(batch, -1, -1)
        self.valid = resume.present
        return resume.hidden.expand(batch, -1, -1)

    def begin(self, x: torch.Tensor, incoming: torch.Tensor | None) -> None:
        """At the first block: resolve the schedule for the input length and read the padding."""
        if self._started:
            return
        self._started = True
        batch, num_tokens, _ = x.shape
        c = self.config
        self.steps = c.method.layer_steps(batch, num_tokens, self.num_protected, self.num_layers)
        if self.steps is not None:
            self.schedule = [step.after for step in self.steps]
            self._span = num_tokens
        else:
            requested = resolve_schedule(c.r, c.ratio, self.num_layers, num_tokens, self.num_protected, c.schedule)
            self.schedule = _method_schedule(c.method, requested, num_tokens, self.num_protected, self.num_layers)
        self.observed = {layer % self.num_layers for layer in c.method.observed_layers(self.num_layers)}
        self.meta["num_input_tokens"] = num_tokens
        self.valid = _valid_from_mask(incoming, batch, num_tokens)
        if self.config.trace:
            self.source = torch.arange(num_tokens, device=x.device).expand(batch, num_tokens)
        if self.config.method.needs_positions:
            self.positions = torch.arange(num_tokens, device=x.device).expand(batch, num_tokens)

    def passthrough(self, layer: int) -> bool:
        """True when block ``layer`` can run its original forward: nothing merged yet,
        nothing merges here, nothing to record."""
        return (
            self.sizes is None
            and self.schedule[layer] == 0
            and layer not in self.observed
            and not self.config.method.plans_every_layer
            and not self.config.trace
            and not self.config.keep_hidden
            and self.config.resume is None
            and self.steps is None
        )

    def block_done(self, hidden: torch.Tensor) -> None:
        """Called with each block's output ``[B, N_l, C]``."""
        if self.config.keep_hidden:
            sizes = None if self.sizes is None else self.sizes[:1]
            self.hidden.append((hidden[:1], sizes))

    # -- called by the adapters ---------------------------------------------------------
    def before_attention(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """With a method's :class:`LayerStep` s (the batch is a clip's frames): join ``step.group`` consecutive
        sequences of ``x`` ``[B, N, C]`` (the tokens entering block ``layer``) and remove ``step.before`` tokens
        from each → ``[B / group, group * N - before, C]``. Without steps: ``x`` as it is."""
        if self.steps is None:
            return x
        self._entering = (layer, x.shape[0] * x.shape[1])
        step = self.steps[layer]
        if step.group > 1:
            x = self._join(step.group, x)
        if step.before > 0:
            inputs = MergeInputs(metric=x, num_protected=self.num_protected, hidden=x, sizes=self.sizes,
                                 valid=self.valid, layer=layer, num_layers=self.num_layers, extra=self.config.extra)
            x = self._apply(self.config.method.plan_before_attention(inputs, step.before), x)
        return x

    def _join(self, group: int, x: torch.Tensor) -> torch.Tensor:
        """Join ``group`` consecutive sequences of ``x`` and of every per-token record (protected tokens first)."""
        method, protected, num_tokens = self.config.method, self.num_protected, x.shape[1]
        if self.sizes is not None:
            self.sizes = method.join(self.sizes, group, protected)
        if self.valid is not None:
            self.valid = method.join(self.valid, group, protected)
        if self.source is not None:
            self.source = method.join_source(self.source, group, num_tokens, protected)
        if self.positions is not None:
            raise ValueError(f"{method.name} joins sequences and cannot track positions")
        if self.anchors is not None:  # input indices of each sequence → of the joined one
            member = torch.arange(x.shape[0], device=x.device).remainder(group).unsqueeze(1)  # [B, 1]
            self.anchors = method.join(self.anchors + member * self._span, group, protected)
        self._span *= group
        self.num_protected = protected * group
        return method.join(x, group, protected)

    def attention_mask(self, incoming: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        """The mask for this layer's attention call.

        incoming: the model's own mask for the input tokens (``None``, bool or additive
        ``[B, 1, N0, N0]``); x: ``[B, N, C]``. Until something merged, the model's mask
        is passed through untouched (so r=0 is exactly the unpatched model); afterwards
        an additive ``[B, 1, 1, N]`` bias: ``log(size)`` (proportional attention) and
        ``-inf`` on padding.
        """
        self.begin(x, incoming)
        if self.sizes is None:
            self._bias = None if self.valid is None else _padding_bias(self.valid, x.dtype)
            return incoming
        bias = self.sizes.log().to(x.dtype) if self.config.prop_attn else torch.zeros_like(self.sizes, dtype=x.dtype)
        bias = bias.transpose(1, 2).unsqueeze(1)  # [B, 1, 1, N]
        if self.valid is not None:
            bias = bias + _padding_bias(self.valid, x.dtype)
        self._bias = bias
        return bias

    def after_attention(
        self, layer: int, x: torch.Tensor, keys: torch.Tensor, query: torch.Tensor | None, num_heads: int,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Merge the tokens of ``x`` ``[B, N, C]`` (after the attention residual) as the schedule and
        method say; returns ``[B, N - r, C]``. ``keys`` / ``query``: this layer's key and query
        projections ``[B, N, H*d]`` (``query`` may be None: then no attention is computed).
        ``segments``: ``[N]`` long, batch 1 only: tokens merge only within their segment (contiguous runs,
        :mod:`tomviz.merge.segments`); None: anywhere."""
        r = self.schedule[layer]
        method = self.config.method
        plans = r > 0 or method.plans_every_layer
        cls_heads, attention = self._attention(layer, keys, query, num_heads, plans)
        cls_attn = None if cls_heads is None else cls_heads.mean(1)
        if not plans and not self.config.trace:
            self.removed.append(0 if self.steps is None else self._removed(layer, x.shape[1], x))
            return x
        if plans:
            inputs = MergeInputs(
                metric=key_metric(keys, num_heads),
                num_protected=self.num_protected,
                hidden=x,
                cls_attention=cls_attn,
                sizes=self.sizes,
                valid=self.valid,
                positions=self.positions,
                attention=attention,
                history=dict(self.history),
                layer=layer,
                num_layers=self.num_layers,
                extra=self.config.extra,
            )
            plan = method.plan(inputs, r) if segments is None else plan_within_segments(method, inputs, r, segments)
        else:
            plan = MergePlan.identity(x.shape[0], x.shape[1], x.device)
        num_in = x.shape[1]
        x = self._apply(plan, x)
        self.removed.append(self._removed(layer, num_in, x))
        if self.config.trace:
            full = attention if self.config.full_attention else None
            self._record(plan, num_in, x, cls_attn, cls_heads, full)
        return x

    def _attention(
        self, layer: int, keys: torch.Tensor, query: torch.Tensor | None, num_heads: int, plans: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(CLS attention per head ``[B, H, N]``, full attention ``[B, N, N]`` mean over heads), each None
        unless the trace or the method reads it; keeps the layers the method observes in ``history``."""
        if query is None:
            return None, None
        cls_heads = attention = None
        if self.wants_cls_attention:
            cls_heads = attention_probabilities(query[:, :1], keys, num_heads, self._bias)[:, :, 0]  # [B, H, N]
        method = self.config.method
        record_full = self.config.trace and self.config.full_attention
        if self.wants_query and (record_full or (method.needs_attention and (plans or layer in self.observed))):
            attention = attention_probabilities(query, keys, num_heads, self._bias).mean(1)  # [B, N, N]
            if layer in self.observed:
                self.history[layer] = attention
        return cls_heads, attention

    def _removed(self, layer: int, num_in: int, x: torch.Tensor) -> int:
        """Tokens layer ``layer`` removed: from each sequence, or with steps from the whole batch."""
        if self.steps is None:
            return num_in - x.shape[1]
        if self._entering is None or self._entering[0] != layer:
            raise ValueError(f"{self.config.method.name} needs blocks that call MergeState.before_attention")
        return self._entering[1] - x.shape[0] * x.shape[1]

    def _apply(self, plan: MergePlan, x: torch.Tensor) -> torch.Tensor:
        """Merge ``x`` ``[B, N, C]`` by ``plan`` and carry sizes, padding, sources and positions along."""
        if plan.is_identity:
            return x
        x, self.sizes = plan.merge(x, self.sizes)
        if self.valid is not None:
            self.valid = plan.reduce_any(self.valid)
        elif plan.ragged:  # per-element counts: the empty slots become padding
            self.valid = plan.reduce_any(torch.ones_like(plan.dst, dtype=torch.bool))
        if self.source is not None:
            self.source = plan.compose(self.source)
        if self.positions is not None:
            self.positions = plan.reduce_min(self.positions)
        anchors = plan.representatives()
        self.anchors = anchors if self.anchors is None else self.anchors.gather(1, anchors)
        return x

    def record_output(self, tokens: torch.Tensor) -> None:
        """The backbone's final tokens ``[B, N_L, C]`` (after its last norm), for a head that pools them by size."""
        self.final_tokens = tokens

    def token_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, 1]`` in ``tokens``' dtype: how many input tokens each of ``tokens`` ``[B, N, C]`` (the
        current tokens) stands for: its size, 0 where it is absent (padding, a coalition's missing token)."""
        batch, num_tokens = tokens.shape[:2]
        weights = tokens.new_ones(batch, num_tokens, 1) if self.sizes is None else self.sizes.to(tokens.dtype)
        weights = weights.expand(batch, -1, -1)
        if self.valid is not None:
            weights = weights * self.valid.unsqueeze(-1).to(tokens.dtype)
        return weights

    # -- helpers -------------------------------------------------------------------------
    def _record(self, plan, num_in, x, cls_attn, cls_heads, full) -> None:
        if self.steps is not None:
            self.layers.append(self._record_batch(x, cls_attn))
            return
        source = self.source[0].cpu().numpy().astype(np.int32)
        # input tokens per token, counted from the source map (a method's own size rule, such as
        # DiffRate's cosine-scaled sizes, changes self.sizes but not the member counts)
        sizes = np.bincount(source[source >= 0], minlength=x.shape[1]).astype(np.float32)
        lt = LayerTrace(
            source=source,
            sizes=sizes,
            num_tokens_in=num_in,
        )
        if plan.edges is not None:
            real = plan.edges.src[0] >= 0  # a ragged plan pads its edges with -1
            lt.edges_src = plan.edges.src[0][real].cpu().numpy().astype(np.int32)
            lt.edges_dst = plan.edges.dst[0][real].cpu().numpy().astype(np.int32)
            lt.edges_score = plan.edges.score[0][real].detach().float().cpu().numpy()
        if cls_attn is not None and self.config.cls_attention:
            lt.cls_attention = cls_attn[0].detach().float().cpu().numpy()
        if cls_heads is not None and self.config.cls_attention_heads:
            lt.cls_attention_heads = cls_heads[0].detach().float().cpu().numpy()
        if full is not None:
            lt.attention = full[0].detach().float().cpu().numpy()
        self.layers.append(lt)

    def _record_batch(self, x: torch.Tensor, cls_attn: torch.Tensor | None) -> LayerTrace:
        """With steps: one record for the whole batch (its sequences one after the other, token ``b * N + n``);
        the input tokens in batch order (a clip's frames, frame-major). No edges."""
        batch, num_tokens = x.shape[:2]
        offsets = torch.arange(batch, device=self.source.device).unsqueeze(1) * num_tokens  # [B, 1]
        source = torch.where(self.source < 0, self.source, self.source + offsets).flatten().cpu().numpy().astype(np.int32)
        sizes = np.bincount(source[source >= 0], minlength=batch * num_tokens).astype(np.float32)
        entering = self._entering[1] if self._entering is not None else source.shape[0]
        layer = LayerTrace(source=source, sizes=sizes, num_tokens_in=entering)
        if cls_attn is not None and self.config.cls_attention:  # each sequence's first token's attention
            layer.cls_attention = cls_attn.detach().float().flatten().cpu().numpy()
        return layer

    def trace(self) -> Trace:
        meta = {
            **self.meta,
            "method": self.config.method.name,
            "schedule": list(self.removed),  # what each layer removed (adaptive methods differ from the request)
            "requested_schedule": list(self.schedule),
            "prop_attn": self.config.prop_attn,
            "num_protected": self.num_protected,
        }
        return Trace(meta=meta, layers=self.layers)


def key_metric(keys: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Keys ``[B, N, H*d]`` summed over heads: ``[B, N, d]``. ToMe averages them; the sum is the mean
    times the head count, which no cosine similarity sees, and skips a division."""
    batch, num_tokens, width = keys.shape
    return keys.view(batch, num_tokens, num_heads, width // num_heads).sum(2)


def attention_probabilities(
    query: torch.Tensor, keys: torch.Tensor, num_heads: int, bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention, float32: query ``[B, Q, H*d]``, keys ``[B, N, H*d]``, additive bias ``[B, 1, 1, N]``
    (or None) → ``[B, H, Q, N]``."""
    batch, num_tokens, width = keys.shape
    head_dim = width // num_heads
    k = keys.view(batch, num_tokens, num_heads, head_dim).transpose(1, 2)  # [B, H, N, d]
    q = query.view(batch, -1, num_heads, head_dim).transpose(1, 2)  # [B, H, Q, d]
    logits = (q @ k.transpose(-1, -2)).float() * head_dim**-0.5  # [B, H, Q, N]
    if bias is not None:
        logits = logits + bias.float()
    return logits.softmax(-1)


def _method_schedule(method: MergeMethod, requested: list[int], num_tokens: int, num_protected: int, num_layers: int) -> list[int]:
    """The method's own per-layer schedule (:meth:`MergeMethod.schedule_for`), checked for shape and sign."""
    schedule = [int(r) for r in method.schedule_for(list(requested), num_tokens, num_protected, num_layers)]
    if len(schedule) != num_layers or any(r < 0 for r in schedule):
        raise ValueError(f"{method!r} returned the schedule {schedule} for {num_layers} layers")
    if sum(schedule) > num_tokens - num_protected:
        raise ValueError(f"{method!r} asks to remove {sum(schedule)} of {num_tokens - num_protected} tokens")
    return schedule


def _valid_from_mask(mask: torch.Tensor | None, batch: int, num_tokens: int) -> torch.Tensor | None:
    """Key validity ``[B, N]`` from a model's 4-D mask (row of the first query), or None if no padding."""
    if mask is None:
        return None
    row = mask[:, 0, 0, :] if mask.dim() == 4 else mask.reshape(batch, -1)[:, -num_tokens:]
    valid = row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2
    valid = valid.expand(batch, num_tokens)
    return None if bool(valid.all()) else valid.clone()


def _padding_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, N]`` bool → additive ``[B, 1, 1, N]`` (0 or the dtype's minimum)."""
    bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    bias = bias.masked_fill(~valid, torch.finfo(dtype).min)
    return bias[:, None, None, :]
