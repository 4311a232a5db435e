"""Frames × words as players of one game: HBI (Jin et al., CVPR 2023, "Video-Text as Game Players"), without its training.

Read from the original, jpthu17/HBI @b261e9c: ``HBI/models/banzhaf.py`` (``banzhaf_values``,
``BanzhafInteraction.banzhaf_interaction``), ``HBI/models/modeling.py`` (``entity_level``, ``get_similarity_logits``)
and ``HBI/models/cluster.py`` (``CTM``, ``cluster_dpc_knn``, ``merge_tokens``).

**Players**: the frames (one embedding each) and the words of a text (one embedding each), or their groups. With
``L[t, v]`` the cosine between word (group) ``t`` and frame (group) ``v``, the value of a coalition is the original's

    v(S) = ½ (Σ_t w_t max_v L'[t, v] + Σ_v w_v max_t L'[t, v]),

where ``L'`` is ``L`` with every cell of an absent word or frame set to 0 (the zeros take part in the maxima) and
``w`` is a softmax of per-player weight logits over the present players (an absent player's logit is −9e15, so it
weighs nothing). The pairwise Banzhaf interaction of a frame group ``i`` and a word group ``j`` is the mean over
coalitions ``S`` of the other players — each present by a fair coin — of ``v(S ∪ ij) − v(S ∪ i) − v(S ∪ j) + v(S)``,
estimated with :func:`tomviz.scores.estimate.banzhaf_game` (exact enumeration up to 12 players, else MSR sampling
with standard errors).

**What stands in for the trained parts** (HBI's weights are not public for stock CLIP, and this is a training-free
reading):

* the weight heads ``text_weight_fc`` / ``video_weight_fc`` → zero logits: uniform weights over the present players;
* the temporal transformer over frames (``seqTransf``) → none: each frame's own CLIP image embedding
  (with X-CLIP, its own trained multi-frame transformer's per-frame outputs);
* the merge modules (``CTM``: a trained token conv and score before DPC-KNN, then a ``TCBlock``) → untrained DPC-KNN
  (:func:`tomviz.merge.temporal.density.density_peak_levels`) on the frame and word embeddings themselves, k = 3, at
  the authors' ratios 0.25 then 0.5 (12 frames → 3 → 2; the original's 32 padded text slots → 8 → 4, here
  ``ceil(words · ratio)`` of the real words); a group's embedding is the plain mean of its members'.

Level 0 plays frames × words, level 1 the first groups, level 2 the second. Differences from the original, on
purpose: the interaction is in cosine units (the original multiplies the logits by 1000 before estimating); the
start/end tokens of the text are no players (words are); the original's ``v(S ∪ ij)`` restores only the cell
``L[i, j]`` (not word i's row nor frame j's column) and re-softmaxes already-softmaxed weights, so its estimate is
not the interaction above — here ``v(S ∪ ij)`` is the same value function as every other coalition's.

Checked beside the original (its ``banzhaf_values`` and ``banzhaf_interaction`` run outside this project on six
seeded 3-word × 4-frame similarity matrices, half with random weight logits, its coin draws enumerated to get its
estimator's exact expectation): :func:`hbi_value` equals ``banzhaf_values`` to 1e-16 on 300 coalitions; the
interactions equal ours to 1e-16 once its ``v(S ∪ ij)`` is computed by its own value function; as released its
estimate differs by up to 0.30 where the interactions themselves reach 0.19 (after undoing its ×1000).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from tomviz.inputs.image import ImageSpec
from tomviz.merge.temporal.density import density_peak_levels
from tomviz.models.frames import frame_pixels
from tomviz.models.xclip import is_xclip, xclip_embeddings
from tomviz.scores.estimate import EXACT_LIMIT, GameEstimate, Progress, banzhaf_game
from tomviz.scores.hbi import split_words
from tomviz.scores.targets import pooled

RATIOS = (0.25, 0.5)  # HBI's v_rate0 / v_rate1 and t_rate0 / t_rate1 (main_retrieval.py defaults)
DPC_K = 3  # HBI's CTM(k=3)
LEVELS = ("frames × words", "first groups (ratio 0.25)", "second groups (ratio 0.5)")
MASKED_LOGIT = -9e15  # the original's weight logit of an absent player


@dataclass(frozen=True)
class FrameWordFeatures:
    """One clip and one text in a joint embedding space (T frames, W words, D channels)."""

    frames: torch.Tensor  # [T, D] one embedding per frame
    words: torch.Tensor  # [W, D] one embedding per word
    word_names: list[str]  # [W]
    model: str  # what embedded them


def frame_word_features(loaded: Any, frames: np.ndarray, text: str, tokenizer: Any = None) -> FrameWordFeatures:
    """One embedding per frame of ``frames`` ``[T, H, W, 3]`` uint8 and per word of ``text``, in the joint space of
    ``loaded``: stock CLIP applied per frame (its projected image embedding), or X-CLIP over the clip (each frame's
    projected CLS after its multi-frame transformer, :func:`tomviz.models.xclip.xclip_embeddings`). A word's
    embedding is the mean of its BPE tokens' projected final states (the original's ``encode_text(return_hidden=True)``:
    ``ln_final`` then ``text_projection`` on every token)."""
    if not (is_xclip(loaded) or getattr(loaded, "clip_text", False)):
        raise ValueError(f"{loaded.name} is not a CLIP or X-CLIP model with image and text towers")
    tokenizer = tokenizer or loaded.tokenizer
    if tokenizer is None:
        raise ValueError(f"{loaded.name} has no tokenizer for its text tower")
    words = split_words(tokenizer, text)
    pixels = frame_pixels(frames, loaded.image_spec or ImageSpec(size=(224, 224)))  # [T, 3, h, w]
    if is_xclip(loaded):
        frame_emb, tokens = xclip_embeddings(loaded, pixels, words.input_ids, words.attention_mask)
    else:
        frame_emb, tokens = _clip_embeddings(loaded, pixels, words.input_ids, words.attention_mask)
    word_emb = torch.stack([tokens[pos].mean(0) for pos in words.positions])  # [W, D]
    return FrameWordFeatures(frames=frame_emb, words=word_emb, word_names=words.words, model=loaded.name)


def _clip_embeddings(loaded: Any, pixels: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP: ``([T, D] projected image embeddings, [L, D] projected final text states)``."""
    model, device = loaded.model, loaded.device
    with torch.inference_mode():
        frames = pooled(model.get_image_features(pixel_values=pixels.to(device)))  # [T, D]
        hidden = model.text_model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).last_hidden_state
        tokens = model.text_projection(hidden)[0]  # [L, D]
    return frames.float().cpu(), tokens.float().cpu()


def masked_softmax(logits: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``[M, n]`` softmax of ``logits`` ``[n]`` (or ``[M, n]``) over the ``present`` ``[M, n]`` bool players."""
    z = np.where(present, np.broadcast_to(logits, present.shape), MASKED_LOGIT)  # [M, n]
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def hbi_value(similarity: np.ndarray, frames_present: np.ndarray, words_present: np.ndarray,
              frame_logits: np.ndarray | None = None, word_logits: np.ndarray | None = None) -> np.ndarray:
    """HBI's value of ``M`` coalitions: ``[M]`` float64.

    similarity: ``[W, T]`` (words × frames, the original's ``t × v``); frames_present ``[M, T]`` and words_present
    ``[M, W]`` bool; ``*_logits``: ``[T]`` / ``[W]`` weight logits (None: uniform over the present players).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    cells = sim[None] * words_present[:, :, None] * frames_present[:, None, :]  # [M, W, T], absent cells 0
    w_words = masked_softmax(np.zeros(sim.shape[0]) if word_logits is None else np.asarray(word_logits, float), words_present)
    w_frames = masked_softmax(np.zeros(sim.shape[1]) if frame_logits is None else np.asarray(frame_logits, float), frames_present)
    words_to_frames = (cells.max(-1) * w_words).sum(-1)  # [M]
    frames_to_words = (cells.max(-2) * w_frames).sum(-1)  # [M]
    return (words_to_frames + frames_to_words) / 2.0


@dataclass
class VideoHBIResult(GameEstimate):
    """One frames × words game (F frame groups, then G word groups: n = F + G players).

    ``values [n]``, ``interactions [n, n]`` in player order; :attr:`cross` is the frame group × word group block.
    """

    level: int  # 0: frames × words; 1, 2: DPC-KNN groups
    frame_groups: np.ndarray  # [T] group (0..F-1) of every frame
    word_groups: np.ndarray  # [W] group (0..G-1) of every word
    words: list[str]  # [W]
    similarity: np.ndarray  # [G, F] cosine of the word-group and frame-group embeddings
    model: str

    @property
    def num_frame_groups(self) -> int:
        return int(self.frame_groups.max()) + 1

    @property
    def num_word_groups(self) -> int:
        return int(self.word_groups.max()) + 1

    @property
    def frame_values(self) -> np.ndarray:
        return self.values[: self.num_frame_groups]  # [F]

    @property
    def word_values(self) -> np.ndarray:
        return self.values[self.num_frame_groups :]  # [G]

    @property
    def cross(self) -> np.ndarray:
        """``[F, G]``: frame group × word group interaction."""
        return self.interactions[: self.num_frame_groups, self.num_frame_groups :]

    @property
    def cross_stderr(self) -> np.ndarray:
        return self.interactions_stderr[: self.num_frame_groups, self.num_frame_groups :]

    def frame_group_names(self) -> list[str]:
        """``"frames 1–4"``-style labels (1-based frame numbers) of the F frame groups."""
        return [f"frames {_spans(np.flatnonzero(self.frame_groups == g) + 1)}" for g in range(self.num_frame_groups)]

    def word_group_names(self) -> list[str]:
        """The words of each of the G word groups, joined by " · "."""
        return [" · ".join(w for w, g in zip(self.words, self.word_groups) if g == k) for k in range(self.num_word_groups)]


def _spans(numbers: np.ndarray) -> str:
    """``[1, 2, 3, 5]`` → ``"1–3, 5"``."""
    parts, start = [], None
    for k, x in enumerate(numbers):
        start = x if start is None else start
        if k + 1 == len(numbers) or numbers[k + 1] != x + 1:
            parts.append(str(start) if start == x else f"{start}–{x}")
            start = None
    return ", ".join(parts)


def grouped(features: torch.Tensor, level: int) -> tuple[np.ndarray, torch.Tensor]:
    """``([N] group of every input, [n, D] group embeddings)`` at ``level`` (0: the inputs themselves)."""
    if level == 0:
        return np.arange(features.shape[0]), features
    assignment, feats = density_peak_levels(features.double(), RATIOS[:level], DPC_K)[-1]
    return assignment.cpu().numpy(), feats


def video_text_game(features: FrameWordFeatures, level: int = 1, samples: int = 2048, exact: bool | None = None,
                    seed: int = 0, progress: Progress | None = None) -> VideoHBIResult:
    """Frame groups × word groups at ``level`` (0, 1 or 2) as one game; exact=None: exact when ≤ 12 players."""
    if level not in range(len(LEVELS)):
        raise ValueError(f"level must be 0 (frames × words), 1 or 2 (DPC-KNN groups), got {level!r}")
    frame_groups, frame_feats = grouped(features.frames, level)
    word_groups, word_feats = grouped(features.words, level)
    norm = torch.nn.functional.normalize
    similarity = (norm(word_feats.double(), dim=-1) @ norm(frame_feats.double(), dim=-1).T).cpu().numpy()  # [G, F]
    num_frames = similarity.shape[1]
    exact = (num_frames + similarity.shape[0] <= EXACT_LIMIT) if exact is None else bool(exact)

    def value(masks: np.ndarray) -> np.ndarray:
        return hbi_value(similarity, masks[:, :num_frames], masks[:, num_frames:])

    est = banzhaf_game(value, num_frames + similarity.shape[0], samples=samples, exact=exact, seed=seed, progress=progress)
    more: dict[str, Any] = dict(level=level, frame_groups=frame_groups, word_groups=word_groups,
                                words=list(features.word_names), similarity=similarity, model=features.model)
    return VideoHBIResult(**{f.name: getattr(est, f.name) for f in fields(GameEstimate)}, **more)
