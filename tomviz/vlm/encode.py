"""The vision encoder and connector of a vision-language model: pixels → the visual tokens for the LLM.

At ``place="encoder"`` a merge method of ``tomviz.METHODS`` runs inside the vision tower; for a
boundary method that reads the encoder's attention, the attention received per patch is kept from
two layers that the method names (``"middle"``, ``"deep"``: L//2 and L-2, or HiPrune's anchor and register layers).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from tomviz.merge.engine import MergeConfig
from tomviz.merge.plan import MergePlan
from tomviz.merge.request import MergeRequest
from tomviz.merge.schedule import resolve_schedule
from tomviz.merge.visual import VisualMethod, get_visual_method
from tomviz.models import patching
from tomviz.models.vlm import LoadedVLM, encoder_state
from tomviz.trace import Trace
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
    if method is not None and method.needs_grid and not adapter.uniform_grid:
        raise ValueError(f"{red.method} reads the tiles' token grid; {adapter.family}'s visual tokens are not equal "
                         "tiles (base view + a cropped anyres grid): use tome, dtome or random_prune")


def attention_layers(method: VisualMethod | None, tower: VisionTower) -> dict[str, int]:
    """The encoder layers whose attention a boundary method reads (``{"deep": ..., "middle": ...}``, the method's own)."""
    if method is None or not method.needs_attention:
        return {}
    return method.attention_layers(tower.used)


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
    stages: dict[str, Trace] = {}
    layers = attention_layers(method, tower)
    with torch.inference_mode():
        state = encoder_state(loaded, config, {**meta, "stage": "encoder", "tile": 0}, unmerge=adapter.unmerge,
                              attention_layers=tuple(layers.values()))
        with state:
            features = adapter.image_features(model, tensors)[None]  # [1, V', D]
        if config.trace:
            stages["encoder"] = state.trace()
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
