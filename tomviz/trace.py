"""The Trace: everything one forward pass did to the tokens, layer by layer.

One object, read by every renderer and score. It holds numpy arrays for one
input (batch element 0), needs no model to load, and saves to JSON or .npz with
a schema version.

Conventions (N0 = input tokens, N_l = tokens after layer l's merge):

* ``layers[l].source``: ``[N0]`` int, the index of the token each input token
  belongs to after layer ``l`` (= its group id); -1 = pruned.
* ``layers[l].sizes``: ``[N_l]`` float, input tokens per token after layer ``l``.
* ``layers[l].cls_attention``: ``[N_{l-1}]`` CLS→token attention inside layer ``l``
  (mean over heads; over the tokens *entering* layer ``l``), or None.
* ``layers[l].edges_*``: the merges layer ``l`` made, as indices into the tokens
  entering it, with the similarity that chose them.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1


@dataclass
class LayerTrace:
    """One layer's record (see the module docstring for shapes)."""

    source: np.ndarray  # [N0] int32, group id of every input token after this layer; -1 = pruned
    sizes: np.ndarray  # [N_l] float32
    num_tokens_in: int
    edges_src: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # [r] into the layer's input
    edges_dst: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # [r]
    edges_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [r]
    cls_attention: np.ndarray | None = None  # [N_in] float32
    cls_attention_heads: np.ndarray | None = None  # [H, N_in] float32 (on request)
    attention: np.ndarray | None = None  # [N_in, N_in] float32, mean over heads (on request)

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.shape[0])

    _ARRAYS = ("source", "sizes", "edges_src", "edges_dst", "edges_score", "cls_attention", "cls_attention_heads", "attention")


@dataclass
class Trace:
    """Per-layer record of one forward pass. ``meta`` holds the input description:

    ``model``, ``family``, ``method``, ``schedule`` (list[int]), ``prop_attn``,
    ``num_protected``, ``num_input_tokens``, and for images ``image_size`` (w, h),
    ``patch_grid`` (rows, cols), ``patch_size``; for text ``tokens`` (list[str]); for a clip
    ``frame_grid`` (frames, rows, cols) with the input tokens frame-major (index ``(t * rows + row) * cols
    + col``, no protected tokens), ``stages`` (one name per layer record: a temporal method's step) and
    ``segments`` (inclusive frame ranges, when the method segments the clip) and ``kept_positions`` (the input
    token whose place each kept token of the last stage takes).
    """

    meta: dict[str, Any]
    layers: list[LayerTrace]

    # --- reading -----------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held by the trace's arrays (every layer's ids, sizes, edges and attention)."""
        return sum(getattr(layer, name).nbytes for layer in self.layers for name in LayerTrace._ARRAYS
                   if getattr(layer, name) is not None)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_input_tokens(self) -> int:
        return int(self.meta["num_input_tokens"])

    def _layer(self, layer: int) -> LayerTrace:
        if not -self.num_layers <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range: the trace has {self.num_layers} layers (0-based)")
        return self.layers[layer]

    def groups(self, layer: int) -> np.ndarray:
        """``[N0]`` int: each input token's group id after ``layer`` (0-based); -1 = pruned."""
        return self._layer(layer).source

    def sizes(self, layer: int) -> np.ndarray:
        """``[N_l]``: input tokens in each group after ``layer``."""
        return self._layer(layer).sizes

    def token_counts(self) -> list[int]:
        """Tokens after each layer, preceded by the input count: ``[N0, N_0, ..., N_{L-1}]``."""
        return [self.num_input_tokens] + [lt.num_tokens for lt in self.layers]

    def sizes_entering(self, layer: int) -> np.ndarray:
        """``[N_in]``: sizes of the tokens entering ``layer`` (all 1 before layer 0)."""
        if layer == 0:
            return np.ones(self.num_input_tokens, dtype=np.float32)
        return self.sizes(layer - 1)

    def groups_entering(self, layer: int) -> np.ndarray:
        """``[N0]``: group ids of the tokens entering ``layer`` (identity before layer 0)."""
        if layer == 0:
            return np.arange(self.num_input_tokens, dtype=np.int32)
        return self.groups(layer - 1)

    def stable_groups(self, layer: int) -> np.ndarray:
        """``[N0]`` int: each input token's group named by its smallest member (an input index),
        -1 = pruned. Unlike :meth:`groups`, a name survives the renumbering between layers, so
        colours keyed on it stay put until the group merges with one holding a smaller index."""
        source = self.groups(layer)
        first = np.full(self.sizes(layer).shape[0], np.iinfo(np.int32).max, dtype=np.int64)
        keep = source >= 0
        np.minimum.at(first, source[keep], np.nonzero(keep)[0])
        out = np.full(source.shape, -1, dtype=np.int32)
        out[keep] = first[source[keep]]
        return out

    def joined_at(self, layer: int) -> np.ndarray:
        """``[N0]`` int: for each input token, the first layer (≤ ``layer``) after which its
        group held more than one input token; -1 if it is still alone (or pruned)."""
        out = np.full(self.num_input_tokens, -1, dtype=np.int32)
        for l in range(layer + 1):
            lt = self.layers[l]
            member = lt.source >= 0
            big = np.zeros(self.num_input_tokens, dtype=bool)
            big[member] = lt.sizes[lt.source[member]] > 1
            out[(out < 0) & big] = l
        return out

    def spread(self, values: np.ndarray, layer: int, entering: bool = False) -> np.ndarray:
        """Spread per-token values back to the input tokens: ``[N_l] → [N0]`` (pruned → nan).

        ``entering=True`` uses the tokens entering ``layer`` (as for its CLS attention).
        """
        source = self.groups_entering(layer) if entering else self.groups(layer)
        out = np.full(source.shape, np.nan, dtype=np.float32)
        keep = source >= 0
        out[keep] = np.asarray(values, dtype=np.float32)[source[keep]]
        return out

    def per_group(self, layer: int, groups: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``[N_l]``: ``values[k]`` at group ``groups[k]`` after ``layer``, nan for the other groups."""
        out = np.full(self.sizes(layer).shape[0], np.nan, dtype=np.float32)
        out[groups] = values
        return out

    # --- patch-grid geometry (image traces) -------------------------------------
    # The input tokens are ``num_protected`` leading tokens (CLS, distillation, registers) followed
    # by the patches in row-major order; these methods are the one place that says so.
    @property
    def num_protected(self) -> int:
        """Leading input tokens that never merge (CLS & co.)."""
        return int(self.meta.get("num_protected", 1))

    @property
    def patch_grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the patches; ValueError for a trace that is not an image's."""
        grid = self.meta.get("patch_grid")
        if not grid:
            raise ValueError("not an image trace: it has no patch grid")
        return int(grid[0]), int(grid[1])

    def patch_tokens(self) -> slice:
        """The input tokens that are patches: ``[N0][patch_tokens()]`` is ``[rows*cols]`` in row-major order."""
        rows, cols = self.patch_grid
        return slice(self.num_protected, self.num_protected + rows * cols)

    def on_patch_grid(self, per_input: np.ndarray) -> np.ndarray:
        """``[N0]`` per input token → ``[rows, cols]`` per patch (protected tokens dropped; dtype kept)."""
        return on_patch_grid(per_input, self.patch_grid, self.num_protected)

    # --- frame geometry (clip traces) -------------------------------------------
    @property
    def frame_grid(self) -> tuple[int, int, int]:
        """``(frames, rows, cols)`` of a clip's tokens; ValueError for a trace that is not a clip's."""
        grid = self.meta.get("frame_grid")
        if not grid:
            raise ValueError("not a clip trace: it has no frame grid")
        return int(grid[0]), int(grid[1]), int(grid[2])

    def on_frame_grid(self, per_input: np.ndarray) -> np.ndarray:
        """``[N0]`` per input token → ``[frames, rows, cols]`` (frame-major; dtype kept)."""
        frames, rows, cols = self.frame_grid
        return np.asarray(per_input).reshape(frames, rows, cols)

    def tokens_per_frame(self) -> np.ndarray:
        """``[frames]`` kept tokens of the last stage whose place lies in each frame (what a frame hands on)."""
        frames, rows, cols = self.frame_grid
        return np.bincount(np.asarray(self.meta["kept_positions"], dtype=np.int64) // (rows * cols), minlength=frames)

    def token_place(self, token: int) -> tuple[int, int, int]:
        """``(frame, row, col)`` (0-based) of input token ``token`` of a clip."""
        frames, rows, cols = self.frame_grid
        if not 0 <= token < frames * rows * cols:
            raise IndexError(f"token {token} out of range: the clip has {frames * rows * cols} tokens")
        return token // (rows * cols), token % (rows * cols) // cols, token % cols

    # --- saving ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "meta": self.meta,
            "layers": [
                {
                    "num_tokens_in": lt.num_tokens_in,
                    **{k: (None if getattr(lt, k) is None else getattr(lt, k).tolist()) for k in LayerTrace._ARRAYS},
                }
                for lt in self.layers
            ],
        }

    def save(self, path: str | Path) -> Path:
        """Write ``.json`` or ``.npz`` (by suffix)."""
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict()))
        elif path.suffix == ".npz":
            arrays: dict[str, np.ndarray] = {
                "schema_version": np.array(SCHEMA_VERSION),
                "meta": np.array(json.dumps(self.meta)),
            }
            for i, lt in enumerate(self.layers):
                arrays[f"l{i}.num_tokens_in"] = np.array(lt.num_tokens_in)
                for k in LayerTrace._ARRAYS:
                    if getattr(lt, k) is not None:
                        arrays[f"l{i}.{k}"] = getattr(lt, k)
            np.savez_compressed(path, **arrays)
        else:
            raise ValueError(f"unknown trace format {path.suffix!r}: use .json or .npz")
        return path

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "Trace":
        _check_version(data.get("schema_version"))
        dtypes = {"source": np.int32, "edges_src": np.int32, "edges_dst": np.int32}
        layers = []
        for rec in data["layers"]:
            kw = {
                k: (None if rec.get(k) is None else np.asarray(rec[k], dtype=dtypes.get(k, np.float32)))
                for k in LayerTrace._ARRAYS
            }
            layers.append(LayerTrace(num_tokens_in=int(rec["num_tokens_in"]), **kw))
        return Trace(meta=data["meta"], layers=layers)

    @staticmethod
    def load(path: str | Path | io.BytesIO) -> "Trace":
        """Read a trace saved by :meth:`save`. No model needed; no pickle is ever loaded."""
        name = str(getattr(path, "name", path))
        if name.endswith(".json"):
            return Trace.from_dict(json.loads(Path(path).read_text()))
        if name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                _check_version(int(z["schema_version"]))
                meta = json.loads(str(z["meta"]))
                layers, i = [], 0
                while f"l{i}.num_tokens_in" in z:
                    kw = {k: (z[f"l{i}.{k}"] if f"l{i}.{k}" in z else None) for k in LayerTrace._ARRAYS}
                    layers.append(LayerTrace(num_tokens_in=int(z[f"l{i}.num_tokens_in"]), **kw))
                    i += 1
            return Trace(meta=meta, layers=layers)
        raise ValueError(f"unknown trace format: {name!r} (use .json or .npz)")


def on_patch_grid(per_input: np.ndarray, patch_grid: Any, num_protected: int) -> np.ndarray:
    """``[N0]`` per input token → ``[rows, cols]`` per patch: the tokens after the ``num_protected``
    leading ones, in row-major order (:meth:`Trace.on_patch_grid` for a trace)."""
    rows, cols = int(patch_grid[0]), int(patch_grid[1])
    patches = np.asarray(per_input)[num_protected : num_protected + rows * cols]
    if patches.shape[0] != rows * cols:
        raise ValueError(f"{patches.shape[0]} patch tokens do not fill a {rows}×{cols} grid")
    return patches.reshape(rows, cols)


def pixel_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[rows, cols]`` → ``[height, width]``: the label of the patch under every pixel."""
    rows, cols = labels.shape
    row_of_y = np.minimum(np.arange(height) * rows // height, rows - 1)  # [H]
    col_of_x = np.minimum(np.arange(width) * cols // width, cols - 1)  # [W]
    return labels[row_of_y[:, None], col_of_x[None, :]]


def _check_version(version: Any) -> None:
    if version != SCHEMA_VERSION:
        raise ValueError(f"trace schema version {version!r} is not supported (this tomviz reads {SCHEMA_VERSION})")
