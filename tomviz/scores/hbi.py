"""Image × text interaction with CLIP (HBI-style: Jin et al., CVPR 2023).

One game whose players are the image groups after ``layer`` (CLS excluded) *and* the
prompt's words; the value of a coalition is CLIP's cosine similarity between the image
embedding with only the coalition's groups present (:class:`~tomviz.merge.engine.Resume`)
and the text embedding with only the coalition's words present (absent words are masked
out of the text tower's attention; start/end tokens always present; the text tower never
merges). The group × word block of the pairwise interaction matrix says which image
regions and words count *together*.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tomviz.scores.banzhaf import GroupScores, top_pairs
from tomviz.scores.estimate import Progress, banzhaf_game
from tomviz.scores.game import check_not_last, chunk_size, groups_at, resume_batches
from tomviz.scores.targets import Inspected, clip_image_forward, pooled


@dataclass
class Words:
    """A tokenised prompt: ``input_ids [1, T]`` and the token positions of each word."""

    input_ids: torch.Tensor  # [1, T]
    attention_mask: torch.Tensor  # [1, T]
    words: list[str]  # [n_w]
    positions: list[list[int]]  # [n_w] token positions of each word (start/end tokens belong to none)


def split_words(tokenizer: Any, text: str) -> Words:
    """Tokenise ``text`` for CLIP and group its tokens into words (``word_ids``, else BPE ``</w>`` ends)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the prompt is empty: type some text")
    enc = tokenizer(text, truncation=True, return_tensors="pt")
    ids = enc["input_ids"]
    mask = enc.get("attention_mask", torch.ones_like(ids))
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    try:
        word_ids = enc.word_ids(0)
    except (AttributeError, ValueError):
        word_ids = None
    positions: list[list[int]] = []
    if word_ids is not None:
        index: dict[int, int] = {}
        for pos, w in enumerate(word_ids):
            if w is None:
                continue
            if w not in index:
                index[w] = len(positions)
                positions.append([])
            positions[index[w]].append(pos)
    else:  # CLIP BPE: a word ends with a token ending in "</w>"; first and last tokens are start/end
        current: list[int] = []
        for pos in range(1, len(tokens) - 1):
            current.append(pos)
            if tokens[pos].endswith("</w>"):
                positions.append(current)
                current = []
        if current:
            positions.append(current)
    words = ["".join(tokens[p] for p in group).replace("</w>", "") for group in positions]
    if not words:
        raise ValueError("the prompt has no words")
    return Words(input_ids=ids, attention_mask=mask, words=words, positions=positions)


@dataclass
class HBIResult(GroupScores):
    """Banzhaf values of image groups and words in one game (n = n_img + n_w players): ``values [n]``,
    image groups first, then words; ``empty_value`` is the similarity with no group and no word present."""

    words: list[str]  # [n_w]; ``groups`` (the base's) are the n_img image groups

    @property
    def group_values(self) -> np.ndarray:
        return self.values[: self.num_groups]  # [n_img]

    @property
    def word_values(self) -> np.ndarray:
        return self.values[self.num_groups :]  # [n_w]

    @property
    def cross(self) -> np.ndarray:
        """``[n_img, n_w]`` group × word interaction."""
        return self.interactions[: self.num_groups, self.num_groups :]

    @property
    def cross_stderr(self) -> np.ndarray:
        return self.interactions_stderr[: self.num_groups, self.num_groups :]

    def group_grid(self, values: np.ndarray | None = None) -> np.ndarray:
        """``[rows, cols]``: per-group values (default: the groups' Banzhaf values) over the patches."""
        values = self.group_values if values is None else values
        per_group = self.trace.per_group(self.layer, self.groups, values)  # [N_l]
        return self.trace.on_patch_grid(self.trace.spread(per_group, self.layer)).astype(np.float32)

    def top_pairs(self, k: int = 10) -> list[tuple[int, int, float]]:
        """Strongest group × word interactions: (group player index, word index, interaction)."""
        flat = np.nan_to_num(self.cross).reshape(-1)
        order = np.argsort(-np.abs(flat))[:k]
        return [(int(o // self.cross.shape[1]), int(o % self.cross.shape[1]), float(flat[o])) for o in order]

    def top_pairs_all(self, k: int = 10) -> list[tuple[int, int, float]]:
        """Strongest pairs among all players (player indices)."""
        return top_pairs(self.interactions, k)


def hbi(
    result: Inspected,
    text: str | Words,
    layer: int,
    samples: int = 512,
    exact: bool = False,
    seed: int = 0,
    tokenizer: Any = None,
    progress: Progress | None = None,
) -> HBIResult:
    """Image groups × words Banzhaf game of a CLIPModel ``result`` (``inspect(..., keep_hidden=True)``).

    text: a prompt (tokenised with ``tokenizer`` or the model's), or ready :class:`Words`.
    """
    loaded = result.model
    if not loaded.clip_text:
        raise ValueError(f"{loaded.name} is not a CLIP model with a text tower (CLIPModel)")
    words = text if isinstance(text, Words) else split_words(tokenizer or loaded.tokenizer or _no_tokenizer(loaded), text)
    layer, groups = groups_at(result, layer)
    what = f"CLIP image–text cosine similarity ({' '.join(words.words)!r})"
    check_not_last(result, layer, what)
    n_img, n_w = len(groups), len(words.words)
    image_forward = clip_image_forward(result)
    device = loaded.device
    ids = words.input_ids.to(device)
    base_mask = words.attention_mask.to(device)

    def value(masks: np.ndarray) -> np.ndarray:
        batch = masks.shape[0]
        image = torch.empty(batch, loaded.model.config.projection_dim, device=device)  # [M, D]
        for rows, config in resume_batches(result, layer, groups, masks[:, :n_img]):
            image[torch.as_tensor(rows, device=device)] = image_forward(config)[0].float()
        attn = base_mask.expand(batch, -1).clone()  # [M, T]
        for w, pos in enumerate(words.positions):
            attn[:, pos] = torch.as_tensor(masks[:, n_img + w], device=device, dtype=attn.dtype)[:, None]
        with torch.inference_mode():
            text_emb = pooled(loaded.model.get_text_features(input_ids=ids.expand(batch, -1), attention_mask=attn))
        return torch.nn.functional.cosine_similarity(image, text_emb).double().cpu().numpy()

    est = banzhaf_game(
        value, n_img + n_w, samples=samples, exact=exact, seed=seed, chunk=chunk_size(result, layer), progress=progress
    )
    return HBIResult.from_estimate(est, target=what, layer=layer, trace=result.trace, groups=groups, words=words.words)


def _no_tokenizer(loaded: Any) -> Any:
    raise ValueError(f"{loaded.name} has no tokenizer: pass tokenizer=... or ready Words")
