"""Density-peak clustering with k nearest neighbours (DPC-KNN), as the video reducers use it.

DPC-KNN (Du et al., 2016; the variant of Zeng et al.'s TCFormer that HoliTom and FastVID adopt): the
distance is the Euclidean distance divided by sqrt(C); a token's density is ``exp(-mean(d²))`` over its
``k`` nearest tokens (itself included, at distance 0); its peak distance is the distance to the nearest
token of strictly higher density (the largest distance of the set when there is none); the ``num``
tokens with the highest ``density * peak distance`` are the centres. Every other token joins its nearest
centre; a centre's merged value is ``beta * centre + (1 - beta) * mean(members)`` (the centre alone when
it has no members).

Deliberate difference from both originals: they add uniform noise of 1e-6 to the densities
(``torch.rand``) to break ties; here ties are left as they are (no random state), so two tokens of equal
density both count as peaks. Inputs with distinct densities give the same centres.
"""
from __future__ import annotations

import math

import torch


def density_peak_scores(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``([L] density * peak distance, [L, L] distance matrix)`` of the tokens ``x`` ``[L, C]``."""
    length, channels = x.shape
    dist = torch.cdist(x.double(), x.double()) / channels**0.5  # [L, L]
    nearest = dist.topk(min(k, length), dim=-1, largest=False).values  # [L, k]
    density = torch.exp(-(nearest**2).mean(dim=-1))  # [L]
    higher = density[None, :] > density[:, None]  # [L, L]: column j is denser than row i
    peak = torch.where(higher, dist, dist.max()).min(dim=-1).values  # [L]
    return peak * density, dist


def density_peak_centres(x: torch.Tensor, num: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres of ``x`` ``[L, C]``: ``([num] long indices ascending, [L, L] distance matrix)``."""
    score, dist = density_peak_scores(x, k)
    return score.topk(num).indices.sort().values, dist


def cluster_assignment(dist: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``[L]`` long: the index (into ``centres``) of the cluster of every token; centres join their own."""
    cluster = dist[:, centres].argmin(dim=-1)  # [L] nearest centre (ties: the first centre)
    cluster[centres] = torch.arange(centres.numel(), device=dist.device)
    return cluster


def centre_blend(x: torch.Tensor, centres: torch.Tensor, cluster: torch.Tensor, beta: float) -> torch.Tensor:
    """``[num, C]``: ``beta * centre + (1 - beta) * mean(other members)``, or the centre alone."""
    num = centres.numel()
    members = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    members[centres] = False
    sums = torch.zeros(num, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, cluster[members], x[members])
    counts = torch.bincount(cluster[members], minlength=num).to(x.dtype)[:, None]  # [num, 1]
    blended = beta * x[centres] + (1 - beta) * sums / counts.clamp(min=1)
    return torch.where(counts > 0, blended, x[centres])


def density_peak_levels(x: torch.Tensor, ratios: tuple[float, ...], k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Hierarchical DPC-KNN of ``x`` ``[L, C]``: per level, ``([L] long group of every input, [n, C] group features)``.

    Level ``i`` clusters the groups of level ``i - 1`` (the inputs themselves before the first) into
    ``max(ceil(n * ratios[i]), 1)`` groups, n the number it clusters, and represents every new group by the plain
    mean of its members' features (HBI's ``merge_tokens`` with unit token weights). Groups are numbered in the
    order of their centres' indices.
    """
    feats, to_input = x, torch.arange(x.shape[0], device=x.device)  # to_input: [L] group of each input so far
    levels = []
    for ratio in ratios:
        num = max(math.ceil(feats.shape[0] * ratio), 1)
        centres, dist = density_peak_centres(feats, num, k)
        cluster = cluster_assignment(dist, centres)  # [n] new group of each current group
        to_input = cluster[to_input]
        counts = torch.bincount(cluster, minlength=num).to(feats.dtype)[:, None]  # [num, 1]
        feats = torch.zeros(num, feats.shape[1], dtype=feats.dtype, device=feats.device).index_add_(0, cluster, feats) / counts
        levels.append((to_input.clone(), feats))
    return levels
