"""Banzhaf values of merged tokens: the groups after one layer as players of a game.

The value of a coalition S runs the layers after ``layer`` with only S's tokens
present (plus the protected tokens: CLS, distillation, registers), sizes kept,
no further merging (:class:`~tomviz.merge.engine.Resume`), and reads a target:

* classifiers: the logit of the predicted class (of the merged run) or a chosen class;
* image embedding models (DINOv2, ViTModel): cosine similarity of the CLS embedding
  (pooler output) to the unmerged model's;
* text encoders (MiniLM, BERT): cosine similarity of the size-weighted mean over the
  *present* tokens to the unmerged mean over all tokens;
* CLIP: cosine similarity of the image embedding to a prompt's text embedding (or to the
  unmerged image embedding when no prompt is given).

One batched forward evaluates a chunk of coalitions. Estimation: :mod:`tomviz.scores.estimate`.
"""
from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from tomviz.merge.engine import MergeConfig, MergeState, Resume
from tomviz.models import patching
from tomviz.scores.estimate import GameEstimate, Progress, banzhaf_game
from tomviz.trace import Trace

if TYPE_CHECKING:
    from tomviz.api import InspectResult

TOKENS_PER_CHUNK = 32768  # coalitions per value-function call ≈ this / tokens at the layer (bounds memory)
SUB_BATCH = 64  # coalitions per forward, sorted by size (each forward pads only to its largest coalition)


@dataclass
class BanzhafResult:
    """Banzhaf values of the n groups after ``layer`` (players; protected tokens excluded).

    ``players[k]`` is the group id (token index after ``layer``, as in ``trace.groups(layer)``)
    of player k; ``values``/``stderr`` are ``[n]``, ``interactions[k1, k2]`` ``[n, n]``.
    """

    values: np.ndarray  # [n] Banzhaf value of each player
    stderr: np.ndarray  # [n] standard error (0 when exact)
    interactions: np.ndarray  # [n, n] pairwise Banzhaf interaction, 0 on the diagonal
    interactions_stderr: np.ndarray  # [n, n]
    players: np.ndarray  # [n] int group ids at ``layer``
    target: str  # what was measured
    layer: int
    samples: int  # value-function evaluations (2**n when exact)
    exact: bool
    seed: int | None
    empty_value: float  # target with only the protected tokens present
    full_value: float  # target with every group present
    trace: Trace
    sizes: np.ndarray  # [n] input tokens in each player's group

    @property
    def num_players(self) -> int:
        return int(self.players.shape[0])

    def per_group(self) -> np.ndarray:
        """``[N_l]``: the value of every token after ``layer`` (protected tokens: nan)."""
        return players_per_group(self.trace, self.layer, self.players, self.values)

    def to_tokens(self, share: bool = False) -> np.ndarray:
        """``[N0]``: each input token gets its group's value (``share=True``: value / group size);
        protected and pruned tokens are nan."""
        per_group = self.per_group()
        if share:
            per_group = per_group / self.trace.sizes(self.layer)
        return self.trace.spread(per_group, self.layer)

    def to_grid(self, share: bool = False) -> np.ndarray:
        """``[rows, cols]``: :meth:`to_tokens` on the patch grid (image models)."""
        return patch_grid_values(self.trace, self.to_tokens(share))

    def to_pixels(self, height: int, width: int, share: bool = False) -> np.ndarray:
        """``[height, width]``: :meth:`to_grid` at the resolution of a picture of the input (image models)."""
        from tomviz.render.overlay import pixel_labels

        return pixel_labels(self.to_grid(share), height, width)

    def top_pairs(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` strongest interactions by magnitude: (player, player, interaction), player indices."""
        return top_pairs(self.interactions, k)


def players_per_group(trace: Trace, layer: int, players: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``[N_l]``: ``values[k]`` at group ``players[k]`` after ``layer``, nan for the groups that do not play."""
    out = np.full(trace.sizes(layer).shape[0], np.nan, dtype=np.float32)
    out[players] = values
    return out


def patch_grid_values(trace: Trace, per_input: np.ndarray) -> np.ndarray:
    """``[N0]`` values of the input tokens → ``[rows, cols]`` over the patches (protected tokens dropped)."""
    grid = trace.meta.get("patch_grid")
    if not grid:
        raise ValueError("not an image trace: it has no patch grid")
    rows, cols = int(grid[0]), int(grid[1])
    skip = trace.num_input_tokens - rows * cols
    return np.asarray(per_input[skip:], dtype=np.float32).reshape(rows, cols)


def top_pairs(interactions: np.ndarray, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` largest ``|interactions[i, j]|`` with i < j: list of (i, j, value)."""
    n = interactions.shape[0]
    iu, ju = np.triu_indices(n, 1)
    vals = np.nan_to_num(interactions[iu, ju])
    order = np.argsort(-np.abs(vals))[:k]
    return [(int(iu[o]), int(ju[o]), float(vals[o])) for o in order]


# -- the model game ------------------------------------------------------------------------------


@dataclass
class ModelGame:
    """A batched value function over the groups after ``layer`` of one inspected input.

    ``__call__(masks [M, n] bool) → [M]`` runs the blocks after ``layer`` once for the M coalitions.
    """

    result: "InspectResult"
    layer: int
    players: np.ndarray  # [n] group ids
    read: Callable[[Any, MergeState], torch.Tensor]  # (outputs, state) → [M] target
    target: str
    forward: Callable[[MergeConfig], tuple[Any, MergeState]]

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        out = np.empty(masks.shape[0], dtype=np.float64)
        for rows, config in resume_batches(self.result, self.layer, self.players, masks):
            outputs, state = self.forward(config)
            out[rows] = self.read(outputs, state).double().cpu().numpy()
        return out


def resume_batches(
    result: "InspectResult", layer: int, players: np.ndarray, masks: np.ndarray
) -> Iterator[tuple[np.ndarray, MergeConfig]]:
    """Forwards for the coalitions ``masks`` ``[M, n]``: (rows of ``masks``, config) per sub-batch.

    Coalitions are sorted by size and cut into sub-batches of ``SUB_BATCH``, so that each
    forward carries only about as many tokens as its largest coalition (see :func:`resume_config`).
    """
    order = np.argsort(masks.sum(1), kind="stable")
    for start in range(0, order.shape[0], SUB_BATCH):
        rows = order[start : start + SUB_BATCH]
        yield rows, resume_config(result, layer, players, masks[rows])


def resume_config(result: "InspectResult", layer: int, players: np.ndarray, masks: np.ndarray) -> MergeConfig:
    """The config that runs the blocks after ``layer`` for the coalitions ``masks`` ``[M, n]`` of ``players``.

    Each coalition keeps only its present tokens (protected ones included, original order,
    so CLS stays first), padded with masked-out tokens to the largest coalition: ``hidden``
    ``[M, k, C]``, ``sizes`` ``[M, k, 1]``, ``present`` ``[M, k]``. Absent tokens are masked
    out of attention either way, so dropping them changes no value, only the cost.
    """
    hidden, sizes = result.state.hidden[layer]  # [1, N_l, C], [1, N_l, 1] | None
    device = hidden.device
    present = torch.ones(masks.shape[0], hidden.shape[1], dtype=torch.bool, device=device)  # [M, N_l]
    present[:, torch.as_tensor(players, device=device)] = torch.as_tensor(masks, device=device)
    keep = int(present.sum(1).max())
    order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :keep]  # [M, k] present first
    resume = Resume(
        layer,
        hidden[0][order],  # [M, k, C]
        None if sizes is None else sizes[0][order],  # [M, k, 1]
        present.gather(1, order),  # [M, k]
    )
    return dataclasses.replace(result.config, trace=False, keep_hidden=False, resume=resume)


def chunk_size(result: "InspectResult", layer: int) -> int:
    """Coalitions per forward at ``layer`` (about ``TOKENS_PER_CHUNK`` tokens)."""
    return max(1, TOKENS_PER_CHUNK // int(result.state.hidden[layer][0].shape[1]))


def players_at(result: "InspectResult", layer: int) -> tuple[int, np.ndarray]:
    """(layer in [0, L), the group ids that play: ``[n]``; protected tokens and padding excluded)."""
    state, trace = result.state, result.trace
    if not state.hidden:
        raise ValueError("Banzhaf scores resume the forward from stored tokens: inspect(..., keep_hidden=True)")
    num_layers = len(state.hidden)
    if not -num_layers <= layer < num_layers:
        raise IndexError(f"layer {layer} out of range: the model has {num_layers} layers (0-based)")
    layer = layer % num_layers
    hidden, _ = state.hidden[layer]
    protected = int(trace.meta.get("num_protected", state.num_protected))
    players = np.arange(protected, hidden.shape[1])
    valid = state.valid
    if valid is not None and valid.shape[1] == hidden.shape[1]:  # padding never plays
        players = players[valid[0, protected:].cpu().numpy()]
    if players.size == 0:
        raise ValueError(f"no groups to score after layer {layer}: only protected tokens are left")
    return layer, players


def check_not_last(result: "InspectResult", layer: int, what: str) -> None:
    """A CLS-read target does not depend on any group after the last layer: refuse loudly."""
    last = len(result.state.hidden) - 1
    if layer == last:
        raise ValueError(
            f"layer {layer} is the last: no block runs after it and the target ({what}) reads only the CLS token, "
            f"so every group's value would be 0; choose a layer ≤ {last - 1}"
        )


def model_game(result: "InspectResult", layer: int, target: Any = None) -> ModelGame:
    """The game of the groups after ``layer`` of ``result`` (which needs ``keep_hidden=True``)."""
    layer, players = players_at(result, layer)
    read, what, reads_all = _target(result, target)
    if not reads_all:
        check_not_last(result, layer, what)
    forward = clip_image_forward(result) if result.model.clip_text else (lambda cfg: _run(result, cfg))
    return ModelGame(result=result, layer=layer, players=players, read=read, target=what, forward=forward)


def banzhaf(
    result: "InspectResult",
    layer: int,
    samples: int = 512,
    exact: bool = False,
    seed: int = 0,
    target: Any = None,
    progress: Progress | None = None,
) -> BanzhafResult:
    """Banzhaf values and pairwise interactions of the groups after ``layer``.

    result: ``tomviz.inspect(..., keep_hidden=True)``. target: None (the default for the model:
    predicted class / cosine to the unmerged embedding), a class index or label (classifiers),
    or a prompt (CLIP). exact: enumerate all 2ⁿ coalitions (n ≤ 12); otherwise MSR over
    ``samples`` coalitions drawn with ``seed``. progress(fraction, message) after each batch.
    """
    game = model_game(result, layer, target)
    est = banzhaf_game(game, len(game.players), samples=samples, exact=exact, seed=seed, chunk=chunk_size(result, game.layer), progress=progress)
    return _result(est, game)


def _result(est: GameEstimate, game: ModelGame) -> BanzhafResult:
    trace = game.result.trace
    return BanzhafResult(
        values=est.values, stderr=est.stderr, interactions=est.interactions,
        interactions_stderr=est.interactions_stderr, players=game.players, target=game.target,
        layer=game.layer, samples=est.samples, exact=est.exact, seed=est.seed,
        empty_value=est.empty_value, full_value=est.full_value, trace=trace,
        sizes=np.asarray(trace.sizes(game.layer))[game.players],
    )


# -- targets -------------------------------------------------------------------------------------


def _run(result: "InspectResult", config: MergeConfig) -> tuple[Any, MergeState]:
    from tomviz.api import run

    return run(result.model, result.inputs, config)


def clip_image_forward(result: "InspectResult") -> Callable[[MergeConfig], tuple[Any, MergeState]]:
    """CLIPModel: only the image tower, ``get_image_features`` → projected embeddings ``[M, D]``."""
    loaded = result.model
    pixel_values = result.inputs.tensors["pixel_values"]

    def forward(config: MergeConfig) -> tuple[Any, MergeState]:
        meta = {"model": loaded.name, **result.inputs.meta}
        with torch.inference_mode(), patching.new_state(loaded.model, config, meta) as state:
            embeds = pooled(loaded.model.get_image_features(pixel_values=pixel_values))
        return embeds, state

    return forward


def pooled(out: Any) -> torch.Tensor:
    """``get_*_features`` return a tensor in older transformers, an output with ``pooler_output`` in 5.x."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _unmerged(result: "InspectResult") -> MergeConfig:
    return dataclasses.replace(result.config, r=0, ratio=None, trace=False, keep_hidden=False, resume=None)


# reference (unmerged) embeddings per inspected input, dropped with the input's MergeState
_REFERENCES: "weakref.WeakKeyDictionary[MergeState, dict[str, torch.Tensor]]" = weakref.WeakKeyDictionary()


def _reference(result: "InspectResult", key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` once per inspected input (repeated scores of one input reuse it)."""
    cache = _REFERENCES.setdefault(result.state, {})
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _cls_embedding(outputs: Any) -> torch.Tensor:
    pooled = getattr(outputs, "pooler_output", None)
    return pooled if pooled is not None else outputs.last_hidden_state[:, 0]


def _mean_embedding(outputs: Any, state: MergeState) -> torch.Tensor:
    """Size-weighted mean of the present tokens: ``[M, N, C]`` → ``[M, C]``."""
    hidden = outputs.last_hidden_state  # [M, N, C]
    weight = state.token_weights(hidden)  # [M, N, 1]
    return (hidden * weight).sum(1) / weight.sum(1).clamp_min(1e-12)


def _target(result: "InspectResult", target: Any) -> tuple[Callable[[Any, MergeState], torch.Tensor], str, bool]:
    """(read(outputs, state) → [M], description, whether it reads every token rather than CLS only)."""
    loaded, outputs = result.model, result.outputs
    cos = torch.nn.functional.cosine_similarity
    if loaded.clip_text:
        if target is None:
            ref = _reference(result, "clip-image", lambda: clip_image_forward(result)(_unmerged(result))[0])  # [1, D]
            return (lambda emb, state: cos(emb, ref)), "cosine to the unmerged CLIP image embedding", False
        if not isinstance(target, str) or not target.strip():
            raise ValueError("the CLIP target is a prompt: give a non-empty string")
        text = _reference(result, f"text:{target}", lambda: text_embedding(loaded, target))  # [1, D]
        return (lambda emb, state: cos(emb, text)), f"CLIP image–text cosine similarity to {target!r}", False
    logits = getattr(outputs, "logits", None)
    if logits is not None:
        labels = loaded.labels or {}
        if target is None:
            cls = int(logits[0].argmax())
        elif isinstance(target, str):
            by_name = {v: k for k, v in labels.items()}
            if target not in by_name:
                raise ValueError(f"unknown class {target!r}: the model's labels are e.g. {list(by_name)[:5]}")
            cls = by_name[target]
        elif isinstance(target, (int, np.integer)) and 0 <= int(target) < logits.shape[-1]:
            cls = int(target)
        else:
            raise ValueError(f"target must be a class index in [0, {logits.shape[-1]}) or a label, got {target!r}")
        name = labels.get(cls, str(cls))
        default = " (the merged prediction)" if target is None else ""
        return (lambda out, state: out.logits[:, cls]), f"logit of class {cls} '{name}'{default}", False
    if target is not None:
        raise ValueError(f"{loaded.name} has no classes or text tower: the target is fixed (got {target!r})")
    from tomviz.api import run

    def unmerged(pool: Callable[..., torch.Tensor]) -> torch.Tensor:
        out, state = run(loaded, result.inputs, _unmerged(result))
        return pool(out, state)

    if loaded.modality == "text":
        ref = _reference(result, "mean", lambda: unmerged(_mean_embedding))  # [1, C]
        read = lambda out, state: cos(_mean_embedding(out, state), ref)  # noqa: E731
        return read, "cosine of the mean over present tokens to the unmerged mean embedding", True
    ref = _reference(result, "cls", lambda: unmerged(lambda out, state: _cls_embedding(out)))  # [1, C]
    return (lambda out, state: cos(_cls_embedding(out), ref)), "cosine of the CLS embedding to the unmerged one", False


def text_embedding(loaded: Any, text: str) -> torch.Tensor:
    """CLIP's projected text embedding ``[1, D]`` of ``text`` (the text tower never merges)."""
    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.name} has no tokenizer for its text tower")
    enc = loaded.tokenizer(text, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        out = loaded.model.get_text_features(
            input_ids=enc["input_ids"].to(loaded.device), attention_mask=enc["attention_mask"].to(loaded.device)
        )
    return pooled(out)
