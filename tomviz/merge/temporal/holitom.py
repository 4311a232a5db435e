"""HoliTom's outer stage: temporal segmentation, static merging, density-peak clustering, dominant tokens.

Shao et al., "HoliTom: Holistic Token Merging for Fast Video Large Language Models" (2025). Reproduces
cokeshao/HoliTom @e9b2972 ``holitom/llava_arch.py``, class ``LlavaMetaForCausalLM_holitom``:
``prepare_inputs_labels_for_multimodal`` (the video branch), ``select_static_windows``,
``get_static_dynamic_features``, ``holitom``, ``merge_tokens_by_attention_density``,
``merge_tokens_by_density``, ``merge_tokens_by_clustering`` and ``cluster_dpc_knn``, with the authors'
defaults (RETAIN_RATIO 0.1, T 0.8, BETA 0.6, D 0, K 7, MAX_WINDOW_SIZE 1024). The rule:

1. ``sim[t, n]``: cosine of token n in frames t and t+1 (``[T-1, N]``). A position is static over frames
   s..e when every step s..e-1 is > ``tau``.
2. Segmentation by dynamic programming: a window s..e is worth (static positions over it) x (e - s); the
   windows (at most ``max_window`` frames) maximising the total are chosen, a longer window only when
   strictly better (ties go to shorter windows). ``reduced`` is the best total.
3. The retain ratio is rescaled for what static merging already removed:
   ``r' = min(retain / ((T*N - reduced) / (T*N)), 1)``.
4. In a window of two frames or more, each static position becomes one token, the mean over the window;
   these are clustered by DPC-KNN (:mod:`tomviz.merge.temporal.density`) into ``round(n * r')`` centres with
   ``k = min(K, centres)``; a centre becomes ``0.6 * centre + 0.4 * mean(members)``; none survive when
   ``round(n * r') == 0``.
5. In every frame, the dynamic tokens (all tokens for a window of one frame) keep their top
   ``ceil(L * r')`` by attention, in positional order; the rest are dropped (D = 0: no contextual tokens).
6. Output, window by window: the static clusters (centres in position order), then each frame's dominant
   tokens — the original's order when the newline is not per grid row (``mm_newline_position != "grid"``).

Each static cluster's group holds every frame of its window at each member position; it takes the place of
its centre in the window's first frame. Deliberate differences: the original's features are SigLIP's
(without its last layer) after the projector and a 2x2 bilinear pool, its attention the last kept layer's,
averaged over heads and all queries and pooled alike; here any per-frame tokens and any ``[T, N]``
importance (on the embedded DINOv2, its CLS attention stands in). No random tie-break noise in DPC-KNN
(see :mod:`tomviz.merge.temporal.density`); no newline tokens; the inner (in-LLM) stage is not here.
Checked beside the original code (run outside this repository, its noise set to zero) on 150 seeded
random clips: equal windows and kept tokens, in order. With the noise, clusters of a few tokens differ
where mutual nearest neighbours tie in density (k = min(7, centres) is small there).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tomviz.merge.plan import PRUNED
from tomviz.merge.temporal.base import TemporalReduction, check_ratio, check_tokens
from tomviz.merge.temporal.density import centre_blend, cluster_assignment, density_peak_centres


def static_window_gain(similarity: torch.Tensor, tau: float) -> torch.Tensor:
    """``[T, T]``: ``gain[s, e]`` = (positions static over frames s..e) * (e - s); 0 for e <= s.
    similarity: ``[T-1, N]`` cosine of each position in frames t and t+1."""
    num_frames = similarity.shape[0] + 1
    gain = torch.zeros(num_frames, num_frames, dtype=torch.float64)
    steps = (similarity > tau).cpu()  # [T-1, N]
    for start in range(num_frames - 1):
        static_count = steps[start:].long().cumprod(dim=0).sum(dim=1)  # [T-1-start]: over start..start+1+i
        lengths = torch.arange(1, num_frames - start, dtype=torch.float64)
        gain[start, start + 1 :] = static_count.double() * lengths
    return gain


def select_static_windows(
    similarity: torch.Tensor, tau: float, max_window: int = 1024
) -> tuple[list[tuple[int, int]], float]:
    """The segmentation of step 2: ``(windows as inclusive (start, end), reduced)``."""
    gain = static_window_gain(similarity, tau)
    num_frames = gain.shape[0]
    best = [0.0] * num_frames  # best[i]: the best total over frames 0..i
    start_of = list(range(num_frames))  # the window that ends at i starts at start_of[i]
    for end in range(num_frames):
        best[end] = best[end - 1] if end > 0 else 0.0
        for size in range(2, min(end + 1, max_window) + 1):
            start = end - size + 1
            value = (best[start - 1] if start > 0 else 0.0) + float(gain[start, end])
            if value > best[end]:
                best[end], start_of[end] = value, start
    windows, end = [], num_frames - 1
    while end >= 0:
        windows.append((start_of[end], end))
        end = start_of[end] - 1
    return windows[::-1], best[-1]


def holitom(
    tokens: torch.Tensor,
    attention: torch.Tensor,
    retain: float = 0.1,
    tau: float = 0.8,
    beta: float = 0.6,
    k: int = 7,
    max_window: int = 1024,
) -> TemporalReduction:
    """HoliTom's outer stage. tokens: ``[T, N, C]``; attention: ``[T, N]`` importance of each token."""
    num_frames, per_frame, channels = check_tokens(tokens)
    if attention.shape != (num_frames, per_frame):
        raise ValueError(f"attention must be [T, N] = {[num_frames, per_frame]}, got {list(attention.shape)}")
    normed = F.normalize(tokens, dim=-1)
    similarity = F.cosine_similarity(normed[:-1], normed[1:], dim=-1)  # [T-1, N]
    windows, reduced = select_static_windows(similarity, tau, max_window)
    total = num_frames * per_frame
    rescaled = min(check_ratio("retain", retain) / ((total - reduced) / total), 1.0)
    values, positions, count = [], [], 0
    group = torch.full((num_frames, per_frame), PRUNED, dtype=torch.long, device=tokens.device)
    for start, end in windows:
        static = torch.zeros(per_frame, dtype=torch.bool, device=tokens.device)
        if end > start:
            static = (similarity[start:end] > tau).all(dim=0)
        parts = [_static_clusters(tokens, start, end, static, rescaled, beta, k)]
        parts += [_dominant_tokens(tokens, attention, frame, ~static, rescaled) for frame in range(start, end + 1)]
        for part_values, local, place in parts:
            group = torch.where(local >= 0, local + count, group)
            values.append(part_values)
            positions.append(place)
            count += place.numel()
    return TemporalReduction(torch.cat(values), group.flatten(), torch.cat(positions), num_frames, per_frame, tuple(windows))


def _static_clusters(
    tokens: torch.Tensor, start: int, end: int, static: torch.Tensor, rescaled: float, beta: float, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 4 for frames start..end: ``(values [m, C], local [T, N] cluster of each token or -1, places [m])``."""
    num_frames, per_frame, channels = tokens.shape
    local = torch.full((num_frames, per_frame), PRUNED, dtype=torch.long, device=tokens.device)
    static_positions = static.nonzero().flatten()  # [n]
    num = round(static_positions.numel() * rescaled)
    if end == start or num == 0:
        return tokens.new_zeros(0, channels), local, static_positions.new_zeros(0)
    window_mean = tokens[start : end + 1, static_positions].mean(dim=0)  # [n, C]
    centres, dist = density_peak_centres(window_mean, num, min(k, num))
    cluster = cluster_assignment(dist, centres)  # [n]
    local[start : end + 1, static_positions] = cluster
    places = start * per_frame + static_positions[centres]
    return centre_blend(window_mean, centres, cluster, beta), local, places


def _dominant_tokens(
    tokens: torch.Tensor, attention: torch.Tensor, frame: int, dynamic: torch.Tensor, rescaled: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 5 for one frame: its top ``ceil(L * r')`` dynamic tokens by attention, in positional order."""
    num_frames, per_frame, _ = tokens.shape
    local = torch.full((num_frames, per_frame), PRUNED, dtype=torch.long, device=tokens.device)
    candidates = dynamic.nonzero().flatten()  # [L]
    count = math.ceil(candidates.numel() * rescaled)
    kept = candidates[attention[frame, candidates].topk(count).indices.sort().values]
    local[frame, kept] = torch.arange(count, device=tokens.device)
    return tokens[frame, kept], local, frame * per_frame + kept
