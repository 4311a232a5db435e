"""The vision encoder and connector of a vision-language model: pixels → the visual tokens for the LLM.

At ``place="encoder"`` a merge method of ``tomviz.METHODS`` runs inside the vision tower; for a
boundary method that reads the encoder's attention, the attention received per patch is kept from
two layers that the method names (``"middle"``, ``"deep"``: L//2 and L-2, or HiPrune's anchor and register layers).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from tomviz.merge import registry
from tomviz.merge.engine import MergeConfig
from tomviz.merge.plan import MergePlan
from tomviz.merge.request import MergeRequest
from tomviz.merge.schedule import resolve_schedule
from tomviz.merge.visual import VisualMethod, get_visual_method
from tomviz.models import patching
from tomviz.models.vlm import LoadedVLM, encoder_state
from tomviz.trace import Trace
from tomviz.vlm import mustdrop
from tomviz.vlm.inputs import VLMInput
from tomviz.vlm.reduction import Reduction


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
    boundary_method: VisualMethod | None = None  # the boundary method, resolved once per request (None: no boundary step)
    # a method that ran before the projector (VisionZip): the features are final, in the method's order, and
    # carried [V'] bool marks those that stand for no visual token (each crop's CLS), passed on like text;
    # plan then maps the V visual tokens onto the other features. None: the boundary step is still to come.
    carried: torch.Tensor | None = None
    key_set: torch.Tensor | None = None  # MustDrop: [K] indices into the features that the LLM never drops
    seconds: float = 0.0  # wall time of the encoder and connector (timed_encode)


@dataclass(frozen=True)
class VisionTower:
    """The patched vision tower's shape, read once per request."""

    num_layers: int  # the encoder's blocks
    used: int  # the blocks whose output reaches the features
    protected: int  # leading tokens that never merge (CLS)

    @classmethod
    def of(cls, loaded: LoadedVLM) -> "VisionTower":
        info = patching.apply(loaded.vision)
        num_layers = len(info.blocks)
        used = loaded.adapter.encoder_layers_used(loaded.model) or num_layers
        return cls(num_layers=num_layers, used=used, protected=info.adapter.num_protected(info.backbone))


def boundary_method(red: Reduction) -> VisualMethod | None:
    """The boundary method ``red`` asks for, or None when nothing is reduced at the boundary."""
    if red.place != "boundary" or red.ratio == 0:
        return None
    return get_visual_method(red.method, **red.method_options)


def encoder_config(red: Reduction, tower: VisionTower, num_patches: int) -> MergeConfig:
    """The vision tower's merge config: ``red``'s method at ``place="encoder"``, else nothing merged."""
    if red.place != "encoder":
        return MergeRequest(method="tome", r=0, prop_attn=red.prop_attn).config()
    request = replace(red.request, ratio=None, r=0)
    if red.ratio == 0:
        return request.config()
    per_layer = resolve_schedule(None, red.ratio, tower.used, num_patches, tower.protected, red.schedule)
    return replace(request, r=per_layer + [0] * (tower.num_layers - tower.used)).config(trace=True)


def check_supported(loaded: LoadedVLM, red: Reduction, method: VisualMethod | None) -> None:
    """A clear error when ``loaded``'s family cannot reduce at ``red``'s place with ``red``'s method."""
    adapter = loaded.adapter
    if red.place == "encoder" and red.ratio > 0 and adapter.encoder_merging:
        raise ValueError(adapter.encoder_merging)
    if method is not None and method.before_projector and not projector_place(loaded):
        raise ValueError(f"{red.method} runs the authors' rule before the projector, on the CLS token of a CLIP tower "
                         f"whose CLS the projector drops (LLaVA-1.5); {loaded.name} ({adapter.family}) has no such place: "
                         "use visionzip_paper (the paper's description on the LLM's tokens)")
    if adapter.encoder_attention and reads_encoder_attention(red, method):
        raise ValueError(f"{red.method} reads the vision encoder's attention, which tomviz does not record in "
                         f"{adapter.family}'s encoder ({adapter.encoder_attention}): use a method that reads the "
                         "tokens alone (tome, pitome, dtome, random; at the boundary also random_prune, downsample, aim)")
    if method is not None and method.needs_grid and not adapter.uniform_grid:
        raise ValueError(f"{red.method} reads the tiles' token grid; {adapter.family}'s visual tokens are not equal "
                         "tiles (base view + a cropped anyres grid): use tome, dtome or random_prune")


def reads_encoder_attention(red: Reduction, method: VisualMethod | None) -> bool:
    """Whether ``red`` reads the vision encoder's attention: a boundary method that does, or an encoder method
    that needs the attention map or the CLS row."""
    if method is not None:
        return method.needs_attention
    if red.place != "encoder" or red.ratio == 0:
        return False
    merging = registry.classes("encoder").get(red.method)
    return merging is not None and (merging.needs_attention or merging.needs_cls_attention)


def projector_place(loaded: LoadedVLM) -> bool:
    """Whether ``loaded`` hands a before-projector method its feature layer with a CLS token that the projector drops."""
    adapter = loaded.adapter
    if adapter.pre_projector is None or adapter.protected_dropped(loaded.model) != 1:
        return False
    info = patching.apply(loaded.vision)
    return info.adapter.num_protected(info.backbone) == 1


def attention_layers(method: VisualMethod | None, tower: VisionTower) -> dict[str, int]:
    """The encoder layers whose attention a boundary method reads (``{"deep": ..., "middle": ...}``, the method's own)."""
    if method is None or not method.needs_attention:
        return {}
    return method.attention_layers(tower.used)


def shares_encoding(red: Reduction) -> bool:
    """Whether ``red``'s vision encoder reduces nothing, so the unreduced run's encoding serves it too: no reduction,
    or one inside the LLM (FastV, AIM) except MustDrop, whose window merging runs in the encoder."""
    return red.place in ("none", "llm") and not mustdrop.wanted(red)


def timed_encode(loaded: LoadedVLM, inputs: VLMInput, red: Reduction) -> Encoded:
    """:func:`encode` with its wall time in ``seconds``."""
    start = time.perf_counter()
    encoded = encode(loaded, inputs, red)
    encoded.seconds = time.perf_counter() - start
    return encoded


def encode(loaded: LoadedVLM, inputs: VLMInput, red: Reduction) -> Encoded:
    """Run the vision encoder and connector (merging inside at ``place='encoder'``)."""
    red.check()
    method = boundary_method(red)
    check_supported(loaded, red, method)
    model, adapter, tensors = loaded.model, loaded.adapter, inputs.tensors
    tower = VisionTower.of(loaded)
    rows, cols = adapter.patch_grid(model, tensors)
    token_grid, num_tiles = adapter.token_grid(model, tensors)
    config = encoder_config(red, tower, rows * cols + tower.protected)
    meta = {"model": loaded.name, "patch_grid": [rows, cols], "token_grid": list(token_grid), "num_tiles": num_tiles,
            "image_size": inputs.meta["image_size"], "place": red.place}
    crops = None if adapter.crop_grid is None else adapter.crop_grid(loaded.tokenizer, tensors)
    if crops is not None:
        meta["crop_grid"] = list(crops)  # the crops' layout on the photo (tomviz.render.vlm.tile_panels)
    if method is not None and method.before_projector:
        return encode_before_projector(loaded, inputs, red, method, tower, meta)
    if mustdrop.wanted(red):
        return encode_mustdrop(loaded, inputs, red, meta)
    stages: dict[str, Trace] = {}
    layers = attention_layers(method, tower)
    with torch.inference_mode():
        state = encoder_state(loaded, config, {**meta, "stage": "encoder", "tile": 0}, unmerge=adapter.unmerge,
                              attention_layers=tuple(layers.values()))
        with state:
            features = adapter.image_features(model, tensors)[None]  # [1, V', D]
        if config.trace:
            stages["encoder"] = state.trace()
            if adapter.patch_order is not None:  # the tower's own order (Qwen2-VL) → row-major patches
                stages["encoder"] = inputs_reordered(stages["encoder"], adapter.patch_order(model, tensors))
        num_visual = int((tensors["input_ids"][0] == loaded.image_token_id).sum())
        plan, merged = _encoder_plan(loaded, red, state, features, num_visual)
        markers = marker_features = None
        if adapter.layout_markers is not None:  # the markers go on as they are; the rest form one strip
            markers = adapter.layout_markers(model, features)  # [V + M]
            marker_features, features = features[:, markers], features[:, ~markers]
            meta["num_patches"] = rows * cols * num_tiles
            meta["tile_grids"] = marked_grids(features.shape[1], int(markers.sum()), (rows, cols))
            token_grid, num_tiles = (1, features.shape[1]), 1  # for the (grid-free) methods: one strip
            meta.update(token_grid=list(token_grid), num_tiles=len(meta["tile_grids"]))
        if not merged:
            plan = MergePlan.identity(1, features.shape[1], features.device)
        attention = {name: pool_received(state.received[layer], (rows, cols), token_grid) for name, layer in layers.items()}
    return Encoded(features=features, plan=plan, merged=merged, stages=stages, meta=meta,
                   token_grid=tuple(token_grid), num_tiles=num_tiles, attention=attention,
                   markers=markers, marker_features=marker_features, boundary_method=method)


def encode_before_projector(loaded: LoadedVLM, inputs: VLMInput, red: Reduction, method: VisualMethod,
                            tower: VisionTower, meta: dict[str, Any]) -> Encoded:
    """A boundary method that runs before the projector (VisionZip): the vision tower up to the feature layer
    (the last block whose output reaches the features, ``tower.used - 1``: LLaVA-1.5's layer -2) with its CLS
    row and keys recorded, the method per crop on ``[T, N, Dv]`` (CLS first), then the projector on the
    ``[T, n, Dv]`` it keeps. ``keep`` per crop: ``P - round(ratio * P)`` of the ``P = N - 1`` patches."""
    model, adapter, tensors = loaded.model, loaded.adapter, inputs.tensors
    layer = tower.used - 1
    config = MergeRequest(method="tome", r=0, prop_attn=red.prop_attn).config()
    with torch.inference_mode():
        state = encoder_state(loaded, config, {**meta, "stage": "encoder"}, unmerge=False, cls_layers=(layer,))
        with state:
            hidden = adapter.pre_projector(model, tensors)  # [T, N, Dv]
        view = state.cls_views[layer]
        num_crops, num_tokens, _ = hidden.shape
        patches = num_tokens - 1
        num_visual = int((tensors["input_ids"][0] == loaded.image_token_id).sum())
        if num_visual != num_crops * patches:
            raise ValueError(f"{num_crops} crops of {patches} patches for {num_visual} image tokens in the prompt")
        result = method.select(hidden, view.cls_attention, view.keys, patches - round(red.ratio * patches))
        features = adapter.project(model, result.hidden)  # [T, n, D]
    per_crop = features.shape[1]
    dst = result.plan.dst[:, 1:] - 1  # [T, P] patch → output among the crop's non-CLS outputs (CLS is output 0)
    dst = torch.where(dst < 0, -1, dst + torch.arange(num_crops, device=dst.device)[:, None] * (per_crop - 1))
    carried = torch.zeros(num_crops, per_crop, dtype=torch.bool, device=dst.device)
    carried[:, 0] = True
    dominant = result.dominant_index.shape[1]
    meta = {**meta, "encoder_layer": layer, "dominant": dominant, "contextual": per_crop - dominant,
            "carried_tokens": num_crops}  # per crop: dominant counts CLS, which the trace does not show
    return Encoded(features=features.reshape(1, num_crops * per_crop, -1),
                   plan=MergePlan(dst=dst.reshape(1, -1), num_out=num_crops * (per_crop - 1)), merged=True, stages={},
                   meta=meta, token_grid=tuple(meta["token_grid"]), num_tiles=num_crops, boundary_method=method,
                   carried=carried.reshape(-1))


def encode_mustdrop(loaded: LoadedVLM, inputs: VLMInput, red: Reduction, meta: dict[str, Any]) -> Encoded:
    """MustDrop's stages 1 and 2 (:func:`tomviz.vlm.mustdrop.vision`): the merged tokens in the original's order,
    passed on like a before-projector method's (nothing carried), with the key set for the LLM."""
    windows = mustdrop.vision(loaded, inputs.tensors, red)
    num_visual = int((inputs.tensors["input_ids"][0] == loaded.image_token_id).sum())
    if windows.plan.num_in != num_visual:
        raise ValueError(f"{windows.plan.num_in} patches for {num_visual} image tokens in the prompt")
    stages = {"encoder": mustdrop.encoder_stage(windows.plan, meta, windows.threshold),
              "key_set": mustdrop.key_set_stage(windows.key, windows.plan.num_out, meta)}
    carried = torch.zeros(windows.plan.num_out, dtype=torch.bool, device=windows.features.device)
    return Encoded(features=windows.features, plan=windows.plan, merged=True, stages=stages, meta=meta,
                   token_grid=tuple(meta["token_grid"]), num_tiles=int(meta["num_tiles"]), carried=carried,
                   key_set=windows.key)


def _encoder_plan(loaded: LoadedVLM, red: Reduction, state: Any, features: torch.Tensor,
                  num_visual: int) -> tuple[MergePlan | None, bool]:
    """(plan from the V visual tokens to the merged features ``[1, V', D]``, True) when the encoder merged
    tokens that the connector passes on merged (LLaVA); else (None, False), after checking that there is
    one feature per image token of the prompt (``num_visual``)."""
    adapter = loaded.adapter
    if red.place == "encoder" and not adapter.unmerge and state.sizes is not None:
        dropped = adapter.protected_dropped(loaded.model)
        source = state.source[:1, dropped:] - dropped  # [1, V] patch → merged token (features order)
        return MergePlan(dst=torch.where(source < 0, -1, source), num_out=features.shape[1]), True
    if features.shape[1] != num_visual:
        raise ValueError(f"{features.shape[1]} visual features for {num_visual} image tokens in the prompt")
    return None, False


def inputs_reordered(trace: Trace, order: torch.Tensor) -> Trace:
    """``trace`` with its input tokens taken in ``order`` ``[N0]`` (the old index of each new input token): every
    layer's source map, and the first layer's edges (which index its input tokens)."""
    order_np = order.cpu().numpy()
    new_index = np.argsort(order_np).astype(np.int32)  # [N0] old input index → new
    layers = []
    for depth, layer in enumerate(trace.layers):
        moved = replace(layer, source=layer.source[order_np])
        if depth == 0 and layer.edges_src.size:
            moved = replace(moved, edges_src=new_index[layer.edges_src], edges_dst=new_index[layer.edges_dst])
        layers.append(moved)
    return Trace(meta=trace.meta, layers=layers)


def marked_grids(num_tokens: int, num_markers: int, base: tuple[int, int]) -> list[list[int]]:
    """The tiles of visual tokens separated by row markers (LLaVA-OneVision): a base view of ``base``
    tokens, then a grid with one marker per row (``num_markers`` rows). Returns ``[[rows, cols], ...]``."""
    rest = num_tokens - base[0] * base[1]
    if rest == 0:
        return [list(base)]
    if rest < 0 or num_markers == 0 or rest % num_markers:
        return [[1, num_tokens]]  # no recognisable layout: one strip
    return [list(base), [num_markers, rest // num_markers]]


def pool_received(received: torch.Tensor, patch_grid: tuple[int, int], token_grid: tuple[int, int]) -> torch.Tensor:
    """Attention received per patch ``[T, N]`` (with leading protected tokens) → per visual token ``[1, V]``:
    the mean over the patches each token is made of (SmolVLM: a scale x scale block; LLaVA: one patch)."""
    rows, cols = patch_grid
    patches = received[:, received.shape[1] - rows * cols:].float().view(-1, 1, rows, cols)  # CLS dropped
    pooled = torch.nn.functional.adaptive_avg_pool2d(patches, tuple(token_grid))  # [T, 1, r, c]
    return pooled.reshape(1, -1)
