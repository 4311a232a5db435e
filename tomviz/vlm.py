"""Token reduction inside vision-language models: where, what the LLM then sees, and what it answers.

Three places to reduce the visual tokens (``place``):

* ``"encoder"``: any merge method of ``tomviz.METHODS`` inside the vision encoder. SmolVLM's
  pixel shuffle needs every patch, so merged tokens are copied back to their patches after
  the encoder (the encoder saves compute, the LLM sees the usual count); LLaVA's projector
  works per token, so the LLM receives the merged tokens;
* ``"boundary"``: on the tokens the LLM receives (``tomviz.merge.visual``: ``tome``, ``random``,
  ``downsample``, ``visionzip``); merged tokens carry their size into the LLM's attention as a
  ``log(size)`` bias through its mask (``prop_attn``);
* ``"llm"``: FastV inside the LLM at layer ``K`` (``fastv_layer``).

With ``vtu=True`` (boundary, or LLaVA's encoder merging) the LLM gets DyMU's virtual token
unmerging instead of the log-size bias: it computes on the merged tokens, but every attention
sees each merged token once per member at its members' RoPE positions
(:func:`tomviz.models.llm.vtu_attention`), so it stays close to the unreduced model. VTU needs a
plan that only merges (no pruned tokens) and a rotary LLM.

Each place is traced as a stage with the same :class:`~tomviz.trace.Trace` type:
``stages["encoder"]`` (the patches of tile 0 through the encoder layers), ``stages["boundary"]``
(the visual tokens → the tokens the LLM receives) and ``stages["llm"]`` (the visual tokens the
LLM receives → those layers ≥ K keep). The tokens are laid out per tile (``meta["token_grid"]``,
``meta["num_tiles"]``), tile-major and row-major, as the model's sequence orders them.

The reduced sequence keeps the text tokens and puts each visual group where its first
member sat; positions are renumbered contiguously (as VisionZip does), except under
FastV where the kept tokens keep their positions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from tomviz.merge import get_method
from tomviz.merge.engine import MergeConfig
from tomviz.merge.plan import MergePlan
from tomviz.merge.schedule import resolve_schedule
from tomviz.merge.visual import FastV, VisualTokens, get_visual_method, group_sizes, sequence_order
from tomviz.models import llm, patching
from tomviz.models.preprocess import load_image
from tomviz.models.vlm import LoadedVLM, encoder_state
from tomviz.scores.estimate import banzhaf_game
from tomviz.trace import LayerTrace, Trace

PLACES = ("none", "encoder", "boundary", "llm")


@dataclass
class Reduction:
    """Where and how much to reduce, for one call (never stored on the model)."""

    place: str = "none"  # "none" | "encoder" | "boundary" | "llm"
    method: str = "tome"  # encoder: a tomviz.METHODS name; boundary: tomviz.merge.visual; llm: "fastv"
    ratio: float = 0.0  # fraction of the visual tokens removed (encoder: of the patch tokens, by the last layer)
    schedule: str = "constant"  # encoder: how the ratio spreads over the layers ("constant" | "decreasing")
    prop_attn: bool = True  # log(size) bias for merged tokens (encoder attention; the LLM's attention at the boundary)
    fastv_layer: int = 2  # K for FastV: layers K.. see only the kept visual tokens
    seed: int = 0  # random selection
    vtu: bool = False  # DyMU's virtual token unmerging in the LLM (merged tokens; replaces the log-size bias)
    method_options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.place not in PLACES:
            raise ValueError(f"unknown place {self.place!r}: choose one of {', '.join(PLACES)}")
        if not 0.0 <= self.ratio <= 0.95:
            raise ValueError(f"ratio {self.ratio} is outside 0..0.95")
        if self.place == "llm" and self.method != "fastv":
            raise ValueError(f"inside the LLM the method is fastv, not {self.method!r}")
        if self.place == "boundary" and self.method == "fastv":
            raise ValueError("fastv works inside the LLM: use place='llm'")
        if self.vtu and self.place not in ("boundary", "encoder"):
            raise ValueError(f"virtual token unmerging expands merged tokens: use it at the boundary or the encoder, not {self.place!r}")


@dataclass
class VLMInput:
    """The processor's tensors for one image and question, and their description."""

    tensors: dict[str, torch.Tensor]  # input_ids [1, L], attention_mask, pixel_values, ...
    prompt: str
    question: str
    image: Any  # the RGB PIL image
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prefill:
    """The LLM's (reduced) input and how it came to be."""

    embeds: torch.Tensor  # [1, L', C]
    visual: torch.Tensor  # [L'] bool, the visual tokens of the sequence
    key_bias: torch.Tensor | None  # [L'] log(size) of visual groups (0 for text), or None
    fastv: llm.FastVRequest | None
    stages: dict[str, Trace]
    encoder_seconds: float  # vision encoder + boundary reduction
    vtu: llm.VirtualTokens | None = None  # DyMU's virtual token unmerging: the unmerged sequence behind embeds

    def llm_state(self, **fields: Any) -> llm.LLMState:
        """The LLM's per-call state for this prefill (``fields``: overrides, e.g. a longer ``visual``)."""
        values = dict(visual=self.visual, key_bias=self.key_bias, fastv=self.fastv, vtu=self.vtu)
        return llm.LLMState(**{**values, **fields})


@dataclass
class Generation:
    tokens: list[int]  # the answer's token ids (without the prompt; with the stop token if one came)
    text: str
    first_logits: torch.Tensor  # [vocab] float32, the logits of the first answer token
    prefill_seconds: float
    decode_seconds: float
    llm_visual_tokens: list[int]  # visual tokens per LLM layer
    keep: torch.Tensor | None  # FastV: prefill positions kept from layer K


@dataclass
class AnswerFidelity:
    """How close the reduced model stays to the unreduced one on the unreduced answer."""

    log_likelihood: float  # log p(reference answer | reduced model), teacher-forced, summed over tokens
    reference_log_likelihood: float  # the same under the unreduced model
    first_token_kl: float  # KL(p_unreduced || p_reduced) of the first answer token
    exact_match: bool  # the two greedy answers are the same tokens


@dataclass
class VLMResult:
    """``tomviz.inspect(vlm, (image, question), place=...)``."""

    answer: str
    reference_answer: str
    trace: Trace  # the stage of the chosen place (the boundary stage when nothing is reduced)
    stages: dict[str, Trace]
    fidelity: AnswerFidelity
    timings: dict[str, float]  # encoder_s, prefill_s, decode_s, ttft_s, and the same with a "reference_" prefix
    token_counts: dict[str, int]  # visual tokens: patches (per tile), llm_input, llm_after_k, text
    answer_attention: np.ndarray | None  # [layers, A, V'] attention of each answer step to the visual tokens the LLM received
    answer_tokens: list[str]
    reduction: Reduction
    inputs: VLMInput
    model: LoadedVLM
    _prefill: Prefill | None = None  # the reduced LLM input (for banzhaf)
    _reference_tokens: list[int] | None = None

    def banzhaf(self, samples: int = 256, exact: bool = False, seed: int = 0, chunk: int = 8, progress=None):
        """Banzhaf values of the visual groups the LLM receives (boundary stage; FastV is not applied).

        Value of a coalition S: the teacher-forced log-probability of the unreduced answer when only
        S's visual tokens are present (the others are masked out of every attention, positions kept).
        Returns :class:`tomviz.scores.estimate.GameEstimate` (``values [n]``, ``stderr``, ``interactions``);
        ``self.stages["boundary"].spread(values, -1)`` puts them back on the visual tokens.
        ``progress(fraction, message)`` is called as the coalitions are evaluated.
        """
        loaded, prefill = self.model, self._prefill
        answer = self._reference_tokens or [int(loaded.tokenizer.eos_token_id or 0)]
        ids = torch.tensor([answer], device=prefill.embeds.device)
        visual_positions = prefill.visual.nonzero()[:, 0]  # [n] the players' sequence positions
        with torch.inference_mode():
            embeds = torch.cat([prefill.embeds, loaded.language_model.get_input_embeddings()(ids)], dim=1)  # [1, L, C]
        length = embeds.shape[1]
        visual = torch.cat([prefill.visual, torch.zeros(len(answer), dtype=torch.bool, device=embeds.device)])
        base = torch.zeros(length, device=embeds.device)
        if prefill.key_bias is not None:
            base[: prefill.key_bias.shape[0]] = prefill.key_bias
        absent_bias = torch.finfo(torch.float32).min / 4

        def value(masks: np.ndarray) -> np.ndarray:
            present = torch.as_tensor(masks, device=embeds.device)  # [M, n]
            bias = base.expand(len(masks), -1).clone()  # [M, L]
            bias[:, visual_positions] = torch.where(present, bias[:, visual_positions], absent_bias)
            with torch.inference_mode(), prefill.llm_state(visual=visual, key_bias=bias, fastv=None):
                logits = loaded.model(inputs_embeds=embeds.expand(len(masks), -1, -1), use_cache=False).logits.float()
            steps = logits[:, -(len(answer) + 1):-1]  # [M, A, vocab]
            logp = steps.log_softmax(-1).gather(2, ids.expand(len(masks), -1)[..., None])[..., 0]  # [M, A]
            return logp.sum(1).cpu().numpy()

        return banzhaf_game(value, int(visual_positions.numel()), samples=samples, exact=exact, seed=seed, chunk=chunk,
                            progress=progress)

    def attention_on_image(self, layer: int, step: int) -> np.ndarray:
        """``[V]`` attention of answer step ``step`` in LLM ``layer``, spread onto the visual tokens
        before any reduction at the boundary (each group's value on all its members; pruned: nan)."""
        if self.answer_attention is None:
            raise ValueError("no answer attention was recorded")
        return self.stages["boundary"].spread(self.answer_attention[layer, step], -1)


# --- input -------------------------------------------------------------------------------------
def prepare(loaded: LoadedVLM, image: Any, question: str) -> VLMInput:
    """Image (PIL / path / bytes / array) and question → the processor's tensors."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty: type a question about the image")
    picture = load_image(image)
    processor = loaded.processor
    template = getattr(processor, "chat_template", None) or getattr(loaded.tokenizer, "chat_template", None)
    if template:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    else:
        token = getattr(processor, "image_token", "<image>")
        prompt = f"User: {token} {question}\nAssistant:"
    images = [[picture]] if loaded.adapter.nested_images else [picture]
    try:
        tensors = processor(text=[prompt], images=images, return_tensors="pt")
    except Exception as err:  # noqa: BLE001 - processors raise many types for images they refuse
        raise ValueError(f"the processor of {loaded.name} refused the image: {err}") from err
    length = int(tensors["input_ids"].shape[1])
    if length > loaded.max_length:
        raise ValueError(f"the prompt is {length} tokens with the image; {loaded.name} takes at most {loaded.max_length}")
    device = loaded.device
    tensors = {k: v.to(device) for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    if "pixel_values" in tensors:
        tensors["pixel_values"] = tensors["pixel_values"].to(loaded.model.dtype)
    return VLMInput(tensors=tensors, prompt=prompt, question=question, image=picture,
                    meta={"image_size": [picture.width, picture.height], "num_prompt_tokens": length})


# --- the visual tokens ----------------------------------------------------------------------------
def _stage(name: str, plan: MergePlan, meta: dict[str, Any]) -> Trace:
    """A one-step Trace over the ``plan.num_in`` visual tokens."""
    sizes = group_sizes(plan)[0].cpu().numpy().astype(np.float32)
    layer = LayerTrace(source=plan.dst[0].cpu().numpy().astype(np.int32), sizes=sizes, num_tokens_in=plan.num_in)
    meta = {**meta, "stage": name, "num_input_tokens": plan.num_in, "num_protected": 0,
            "schedule": [plan.num_in - plan.num_out], "prop_attn": meta.get("prop_attn", False)}
    return Trace(meta=meta, layers=[layer])


def _encoder_config(loaded: LoadedVLM, red: Reduction, num_patches: int, protected: int) -> MergeConfig:
    method = get_method(red.method if red.place == "encoder" else "tome", **(red.method_options if red.place == "encoder" else {}))
    vision_layers = len(patching.apply(loaded.vision).blocks)
    used = loaded.adapter.encoder_layers_used(loaded.model) or vision_layers
    if red.place != "encoder" or red.ratio == 0:
        return MergeConfig(method=method, r=0, prop_attn=red.prop_attn)
    per_layer = resolve_schedule(None, red.ratio, used, num_patches, protected, red.schedule)
    return MergeConfig(method=method, r=per_layer + [0] * (vision_layers - used), prop_attn=red.prop_attn, trace=True)


@dataclass
class Encoded:
    """The vision encoder's output, before the boundary."""

    features: torch.Tensor  # [1, V', D] the visual tokens for the LLM (V' < V only when the encoder merged, LLaVA)
    plan: MergePlan  # V visual tokens → the V' features (identity unless the encoder merged them away)
    merged: bool  # the features are already merged (plan not yet applied to anything)
    stages: dict[str, Trace]
    meta: dict[str, Any]
    token_grid: tuple[int, int]
    num_tiles: int
    attention: dict[str, torch.Tensor] = field(default_factory=dict)  # "middle"/"deep": [1, V] received, per visual token
    markers: torch.Tensor | None = None  # [V + M] bool: the image tokens that are layout markers (OneVision's newlines)
    marker_features: torch.Tensor | None = None  # [1, M, D] their features (passed on as they are)


def check_supported(loaded: LoadedVLM, red: Reduction) -> None:
    """A clear error when ``loaded``'s family cannot reduce at ``red``'s place with ``red``'s method."""
    adapter = loaded.adapter
    if red.place == "encoder" and red.ratio > 0 and adapter.encoder_merging:
        raise ValueError(adapter.encoder_merging)
    if red.place == "boundary" and red.ratio > 0 and not adapter.uniform_grid:
        if get_visual_method(red.method, **red.method_options).needs_grid:
            raise ValueError(f"{red.method} reads the tiles' token grid; {adapter.family}'s visual tokens are not equal "
                             "tiles (base view + a cropped anyres grid): use tome, dtome or random")


def encode(loaded: LoadedVLM, inputs: VLMInput, red: Reduction) -> Encoded:
    """Run the vision encoder and connector (merging inside at ``place='encoder'``)."""
    red.check()
    check_supported(loaded, red)
    model, adapter, tensors = loaded.model, loaded.adapter, inputs.tensors
    rows, cols = adapter.patch_grid(model, tensors)
    token_grid, num_tiles = adapter.token_grid(model, tensors)
    protected = patching_protected(loaded)
    config = _encoder_config(loaded, red, rows * cols + protected, protected)
    meta = {"model": loaded.name, "patch_grid": [rows, cols], "token_grid": list(token_grid), "num_tiles": num_tiles,
            "image_size": inputs.meta["image_size"], "place": red.place}
    stages: dict[str, Trace] = {}
    with torch.inference_mode():
        state = encoder_state(loaded, config, {**meta, "stage": "encoder", "tile": 0}, unmerge=adapter.unmerge)
        layers = _attention_layers(loaded, red)
        state.attention_layers = tuple(layers.values())
        with state:
            features = adapter.image_features(model, tensors)[None]  # [1, V', D]
        num_visual = int((tensors["input_ids"][0] == loaded.image_token_id).sum())
        if config.trace:
            stages["encoder"] = state.trace()
        if red.place == "encoder" and not adapter.unmerge and state.sizes is not None:
            dropped = adapter.protected_dropped(model)
            source = state.source[:1, dropped:] - dropped  # [1, V] patch → merged token (features order)
            plan = MergePlan(dst=torch.where(source < 0, -1, source), num_out=features.shape[1])
            merged = True
        else:
            if features.shape[1] != num_visual:
                raise ValueError(f"{features.shape[1]} visual features for {num_visual} image tokens in the prompt")
            merged = False
        markers = marker_features = None
        if adapter.layout_markers is not None:  # the markers go on as they are; the rest form one strip
            markers = adapter.layout_markers(model, features)  # [V + M]
            marker_features, features = features[:, markers], features[:, ~markers]
            meta["num_patches"] = rows * cols * num_tiles
            meta["tile_grids"] = _marked_grids(features.shape[1], int(markers.sum()), (rows, cols))
            token_grid, num_tiles = (1, features.shape[1]), 1  # for the (grid-free) methods: one strip
            meta.update(token_grid=list(token_grid), num_tiles=len(meta["tile_grids"]))
        if not merged:
            plan = MergePlan.identity(1, features.shape[1], features.device)
        attention = {name: _pool_received(loaded, state.received[layer], (rows, cols), token_grid)
                     for name, layer in layers.items()}
    return Encoded(features=features, plan=plan, merged=merged, stages=stages, meta=meta,
                   token_grid=tuple(token_grid), num_tiles=num_tiles, attention=attention,
                   markers=markers, marker_features=marker_features)


def _marked_grids(num_tokens: int, num_markers: int, base: tuple[int, int]) -> list[list[int]]:
    """The tiles of visual tokens separated by row markers (LLaVA-OneVision): a base view of ``base``
    tokens, then a grid with one marker per row (``num_markers`` rows). Returns ``[[rows, cols], ...]``."""
    rest = num_tokens - base[0] * base[1]
    if rest == 0:
        return [list(base)]
    if rest < 0 or num_markers == 0 or rest % num_markers:
        return [[1, num_tokens]]  # no recognisable layout: one strip
    return [list(base), [num_markers, rest // num_markers]]


def _attention_layers(loaded: LoadedVLM, red: Reduction) -> dict[str, int]:
    """The encoder layers whose attention a boundary method reads: ``{"deep": L-2, "middle": L//2}``."""
    if red.place != "boundary" or red.ratio == 0 or not get_visual_method(red.method, **red.method_options).needs_attention:
        return {}
    num_layers = len(patching.apply(loaded.vision).blocks)
    used = loaded.adapter.encoder_layers_used(loaded.model) or num_layers
    return {"deep": max(0, used - 2), "middle": used // 2}


def _pool_received(loaded: LoadedVLM, received: torch.Tensor, patch_grid, token_grid) -> torch.Tensor:
    """Attention received per patch ``[T, N]`` (with leading protected tokens) → per visual token ``[1, V]``:
    the mean over the patches each token is made of (SmolVLM: a scale x scale block; LLaVA: one patch)."""
    rows, cols = patch_grid
    patches = received[:, received.shape[1] - rows * cols:].float().view(-1, 1, rows, cols)  # CLS dropped
    pooled = torch.nn.functional.adaptive_avg_pool2d(patches, tuple(token_grid))  # [T, 1, r, c]
    return pooled.reshape(1, -1)


def to_prefill(loaded: LoadedVLM, inputs: VLMInput, encoded: Encoded, red: Reduction) -> Prefill:
    """Reduce at the boundary and build the LLM's input sequence: input_ids ``[1, L]`` → embeds ``[1, L', C]``."""
    features, plan, token_grid, num_tiles = encoded.features, encoded.plan, encoded.token_grid, encoded.num_tiles
    stages = dict(encoded.stages)
    input_ids = inputs.tensors["input_ids"]
    visual = input_ids[0] == loaded.image_token_id  # [L]
    marker_positions = None
    if encoded.markers is not None:  # layout markers: kept like text
        marker_positions = visual.nonzero()[:, 0][encoded.markers]
        visual[marker_positions] = False
    num_visual = int(visual.sum())
    with torch.inference_mode():
        boundary_meta = {**encoded.meta, "method": "none", "prop_attn": red.prop_attn}
        if red.place == "encoder":
            boundary_meta["method"] = f"encoder:{red.method}"
        if red.place == "boundary" and red.ratio > 0:
            method = get_visual_method(red.method, **red.method_options)
            keep = max(1, num_visual - int(round(red.ratio * num_visual)))
            tokens = VisualTokens(features=features, tile_grid=token_grid, num_tiles=num_tiles, seed=red.seed)
            if method.needs_attention:
                tokens.attention, tokens.attention_middle = encoded.attention["deep"], encoded.attention.get("middle")
            plan = method.plan(tokens, keep)
            boundary_meta["method"] = red.method
        if encoded.merged:  # reorder the merged features by their first patch (the sequence order)
            first = plan.reduce_min(torch.arange(num_visual, device=plan.dst.device)[None])[0]  # [V']
            features = features[:, first.argsort()]
            plan = sequence_order(plan)
            sizes = group_sizes(plan)
        else:
            plan = sequence_order(plan)
            sizes = None
            if plan.num_out != num_visual:
                features, sizes = plan.merge(features, None)
                sizes = sizes[..., 0]
        stages["boundary"] = _stage("boundary", plan, boundary_meta)
        embeds = loaded.language_model.get_input_embeddings()(input_ids)  # [1, L, C]
        if marker_positions is not None:
            embeds = embeds.clone()
            embeds[0, marker_positions] = encoded.marker_features[0].to(embeds.dtype)
        first_member = plan.reduce_min(torch.arange(num_visual, device=plan.dst.device)[None])[0]  # [V'] ascending
        keep_seq = ~visual.clone()
        keep_seq[visual.nonzero()[:, 0][first_member]] = True
        embeds = embeds[:, keep_seq].clone()
        new_visual = visual[keep_seq]
        embeds[0, new_visual] = features[0].to(embeds.dtype)
        key_bias = None
        if sizes is not None and red.prop_attn and red.place in ("boundary", "encoder"):
            key_bias = torch.zeros(embeds.shape[1], device=embeds.device)
            key_bias[new_visual] = sizes[0].float().log()
            if not bool(key_bias.any()):
                key_bias = None
        fastv = None
        if red.place == "llm" and red.ratio > 0:
            fastv = _fastv_request(loaded, red, num_visual, token_grid, num_tiles)
        vtu = None
        if red.vtu:
            key_bias = None  # each member is its own virtual key: no log-size bias
            vtu = virtual_tokens(loaded, plan, keep_seq, visual, first_member)
    return Prefill(embeds=embeds, visual=new_visual, key_bias=key_bias, fastv=fastv, stages=stages, encoder_seconds=0.0,
                   vtu=vtu)


def virtual_tokens(loaded: LoadedVLM, plan: MergePlan, keep_seq: torch.Tensor, visual: torch.Tensor,
                   first_member: torch.Tensor) -> llm.VirtualTokens:
    """The unmerged sequence behind a merged prefill, for VTU.

    plan: ``[1, V]`` visual token → group (sequence order); keep_seq: ``[L]`` bool, the positions of the
    full sequence that the merged one keeps (text, and each group's first member); visual: ``[L]`` bool;
    first_member: ``[V']``. Returns ``index [L]``: the merged position each full position is a copy of.
    """
    if bool((plan.dst < 0).any()):
        raise ValueError("virtual token unmerging needs a plan that only merges: this method prunes visual tokens "
                         "(use tome, dtome or downsample)")
    rotary = getattr(loaded.language_model, "rotary_emb", None)
    if rotary is None:
        raise ValueError(f"virtual token unmerging needs a rotary (RoPE) LLM; {loaded.name}'s has no rotary_emb")
    merged_index = keep_seq.long().cumsum(0) - 1  # [L] merged position of each kept full position
    visual_positions = visual.nonzero()[:, 0]  # [V]
    group_position = merged_index[visual_positions[first_member]]  # [V'] merged position of each group
    index = merged_index.clone()
    index[visual_positions] = group_position[plan.dst[0]]
    return llm.VirtualTokens(index=index, rotary=rotary)


def _fastv_request(loaded: LoadedVLM, red: Reduction, num_visual: int, token_grid, num_tiles: int) -> llm.FastVRequest:
    if not 1 <= red.fastv_layer < len(loaded.language_model.layers):
        raise ValueError(f"fastv_layer must be 1..{len(loaded.language_model.layers) - 1}")
    keep = max(1, num_visual - int(round(red.ratio * num_visual)))
    selector = FastV()

    def select(attention: torch.Tensor) -> torch.Tensor:
        """attention ``[1, V]`` → the kept visual indices ``[keep]``, ascending."""
        tokens = VisualTokens(features=attention[..., None], tile_grid=token_grid, num_tiles=num_tiles, attention=attention)
        return (selector.plan(tokens, keep).dst[0] >= 0).nonzero()[:, 0]

    return llm.FastVRequest(layer=red.fastv_layer, keep=keep, select=select)


def build_prefill(loaded: LoadedVLM, inputs: VLMInput, red: Reduction) -> Prefill:
    """:func:`encode` then :func:`to_prefill`, timed together (``encoder_seconds``)."""
    start = time.perf_counter()
    prefill = to_prefill(loaded, inputs, encode(loaded, inputs, red), red)
    prefill.encoder_seconds = time.perf_counter() - start
    return prefill


def patching_protected(loaded: LoadedVLM) -> int:
    info = patching.apply(loaded.vision)
    return info.adapter.num_protected(info.backbone)


# --- the language model ----------------------------------------------------------------------------
def _stop_ids(loaded: LoadedVLM) -> set[int]:
    ids = set()
    for source in (loaded.tokenizer, getattr(loaded.model, "generation_config", None)):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update([value] if isinstance(value, int) else list(value))
    return ids


def generate(loaded: LoadedVLM, prefill: Prefill, max_new_tokens: int = 24) -> Generation:
    """Greedy decoding at batch 1 with the KV cache, under the prefill's reduction."""
    model = loaded.model
    stop = _stop_ids(loaded)
    state = prefill.llm_state()
    tokens: list[int] = []
    with torch.inference_mode(), state:
        start = time.perf_counter()
        out = model(inputs_embeds=prefill.embeds, use_cache=True, logits_to_keep=1)
        first_logits = out.logits[0, -1].float()
        token = int(first_logits.argmax())
        prefill_seconds = time.perf_counter() - start
        cache = out.cache
        start = time.perf_counter()
        tokens.append(token)
        while len(tokens) < max_new_tokens and token not in stop:
            step = torch.tensor([[token]], device=prefill.embeds.device)
            out = model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.cache
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
        decode_seconds = time.perf_counter() - start
    num_layers = len(loaded.language_model.layers)
    visual_count = int(prefill.visual.sum())
    counts = [visual_count] * num_layers
    if prefill.fastv is not None:
        counts = [visual_count] * prefill.fastv.layer + [prefill.fastv.keep] * (num_layers - prefill.fastv.layer)
    text = loaded.tokenizer.decode([t for t in tokens if t not in stop], skip_special_tokens=True).strip()
    return Generation(tokens=tokens, text=text, first_logits=first_logits, prefill_seconds=prefill_seconds,
                      decode_seconds=decode_seconds, llm_visual_tokens=counts, keep=state.keep)


@dataclass
class TeacherForced:
    log_probs: torch.Tensor  # [A] log p of each answer token
    first_logits: torch.Tensor  # [vocab]
    attention: list[torch.Tensor]  # per layer [A, L'] (when recorded)
    keep: torch.Tensor | None  # FastV: kept positions of the sequence


def teacher_forced(loaded: LoadedVLM, prefill: Prefill, answer: list[int], record_attention: bool = False) -> TeacherForced:
    """One forward over the prompt + ``answer`` (no cache): the log-probability of each answer
    token, and with ``record_attention`` the attention of each answer step (the position that
    predicts the token) to every token, per LLM layer, mean over heads."""
    answer = answer or [int(loaded.tokenizer.eos_token_id or 0)]
    ids = torch.tensor([answer], device=prefill.embeds.device)
    with torch.inference_mode():
        embeds = torch.cat([prefill.embeds, loaded.language_model.get_input_embeddings()(ids)], dim=1)
        length = prefill.embeds.shape[1]
        visual = torch.cat([prefill.visual, torch.zeros(len(answer), dtype=torch.bool, device=embeds.device)])
        bias = None
        if prefill.key_bias is not None:
            bias = torch.cat([prefill.key_bias, torch.zeros(len(answer), device=embeds.device)])
        queries = torch.arange(length - 1, length - 1 + len(answer), device=embeds.device) if record_attention else None
        fastv = None if prefill.fastv is None else replace(prefill.fastv, query=length - 1)  # decided by the last prompt token
        state = prefill.llm_state(visual=visual, key_bias=bias, fastv=fastv, record_queries=queries)
        with state:
            logits = loaded.model(inputs_embeds=embeds, use_cache=False).logits[0].float()  # [L'', vocab]
    steps = logits[-(len(answer) + 1):-1]  # [A, vocab] the logits that predict each answer token
    log_probs = steps.log_softmax(-1).gather(1, ids[0][:, None])[:, 0]
    return TeacherForced(log_probs=log_probs, first_logits=steps[0], attention=state.attention, keep=state.keep)


def first_token_kl(reference: torch.Tensor, reduced: torch.Tensor) -> float:
    """KL(p_ref || p_red) of two logit vectors ``[vocab]``."""
    p = reference.float().log_softmax(-1)
    q = reduced.float().log_softmax(-1)
    return float((p.exp() * (p - q)).sum())


def _fastv_stage(prefill: Any, keep: torch.Tensor, boundary: Trace, layer: int) -> Trace:
    """FastV's pruning inside the LLM as a one-layer trace over the visual tokens that reach it.

    ``keep``: the sequence positions FastV kept after ``layer``; ``prefill.visual``: ``[S]`` bool visual flags."""
    kept = prefill.visual[keep]  # visual flags of the kept positions
    visual_positions = prefill.visual.nonzero()[:, 0]
    kept_visual = torch.isin(visual_positions, keep[kept])  # [V'] which visual tokens survived
    dst = torch.where(kept_visual, kept_visual.long().cumsum(0) - 1, -1)[None]  # [1, V'] new index or -1 (pruned)
    return _stage("llm", MergePlan(dst=dst, num_out=int(kept_visual.sum())),
                  {**boundary.meta, "method": "fastv", "layer": layer})


def inspect_vlm(
    loaded: LoadedVLM,
    image: Any,
    question: str,
    place: str = "boundary",
    method: str = "tome",
    ratio: float = 0.5,
    max_new_tokens: int = 24,
    record_attention: bool = True,
    **options: Any,
) -> VLMResult:
    """The unreduced and the reduced answer to ``question`` about ``image``, their fidelity,
    the traces of every stage and the answer's attention to the visual tokens.
    ``options``: the other :class:`Reduction` fields (``fastv_layer``, ``prop_attn``, ``schedule``, ``seed``, ``method_options``)."""
    inputs = prepare(loaded, image, question)
    reduction = Reduction(place=place, method=method, ratio=ratio, **options)
    reduction.check()
    base = build_prefill(loaded, inputs, Reduction(place="none"))
    reference = generate(loaded, base, max_new_tokens)
    reduced_prefill = build_prefill(loaded, inputs, reduction) if place != "none" else base
    reduced = generate(loaded, reduced_prefill, max_new_tokens) if place != "none" else reference
    forced = teacher_forced(loaded, reduced_prefill, reference.tokens, record_attention=record_attention)
    forced_ref = teacher_forced(loaded, base, reference.tokens) if place != "none" else forced
    fidelity = AnswerFidelity(
        log_likelihood=float(forced.log_probs.sum()),
        reference_log_likelihood=float(forced_ref.log_probs.sum()),
        first_token_kl=first_token_kl(reference.first_logits, reduced.first_logits),
        exact_match=reference.tokens == reduced.tokens,
    )
    stages = dict(reduced_prefill.stages)
    boundary = stages["boundary"]
    if reduced_prefill.fastv is not None and reduced.keep is not None:
        stages["llm"] = _fastv_stage(reduced_prefill, reduced.keep, boundary, reduction.fastv_layer)
    trace = stages.get({"encoder": "encoder", "llm": "llm"}.get(place, "boundary"), boundary)
    attention = None
    if record_attention and forced.attention:
        visual_positions = reduced_prefill.visual.nonzero()[:, 0]
        attention = torch.stack([a[:, visual_positions] for a in forced.attention]).cpu().numpy()  # [layers, A, V']
    timings = {
        "encoder_s": reduced_prefill.encoder_seconds, "prefill_s": reduced.prefill_seconds, "decode_s": reduced.decode_seconds,
        "ttft_s": reduced_prefill.encoder_seconds + reduced.prefill_seconds,
        "reference_encoder_s": base.encoder_seconds, "reference_prefill_s": reference.prefill_seconds,
        "reference_decode_s": reference.decode_seconds, "reference_ttft_s": base.encoder_seconds + reference.prefill_seconds,
    }
    llm_input = boundary.layers[-1].num_tokens
    counts = {
        "patches": boundary.meta.get("num_patches", int(np.prod(boundary.meta["patch_grid"])) * int(boundary.meta["num_tiles"])),
        "visual": boundary.num_input_tokens,
        "llm_input": llm_input,
        "llm_after_k": reduced.llm_visual_tokens[-1],
        "text": int(reduced_prefill.embeds.shape[1] - llm_input),
    }
    tokenizer = loaded.tokenizer
    return VLMResult(
        answer=reduced.text, reference_answer=reference.text, trace=trace, stages=stages, fidelity=fidelity,
        timings=timings, token_counts=counts, answer_attention=attention,
        answer_tokens=tokenizer.convert_ids_to_tokens(reference.tokens), reduction=reduction, inputs=inputs, model=loaded,
        _prefill=reduced_prefill, _reference_tokens=reference.tokens,
    )
