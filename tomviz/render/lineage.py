"""The lineage panel: a markdown account of how one group formed (no gradio)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tomviz.lineage import Lineage

MAX_ROWS = 40  # members listed; a larger group is cut with a note
MAX_NAMES = 6  # names listed per side of a merge


def _names(tokens: Sequence[int], names: Sequence[str]) -> str:
    shown = [names[t] for t in tokens[:MAX_NAMES]]
    more = len(tokens) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def lineage_markdown(lineage: Lineage, names: Sequence[str], what: str = "patch") -> str:
    """Markdown for ``lineage``: a headline, then one row per member (when it joined, with what
    similarity, alongside what), then the merges that built the group. ``names[i]`` names input token ``i``
    (``"patch (3, 4)"`` or a word piece); ``what`` is "patch" or "token". Layers are shown 1-based."""
    plural = "patches" if what == "patch" else f"{what}s"
    start = names[lineage.token]
    last = lineage.layer + 1
    if lineage.pruned_at is not None:
        return f"**{start}** was pruned in layer {lineage.pruned_at + 1}: it has no group after layer {last}."
    if lineage.size == 1:
        return f"**{start}** is still alone after layer {last}: no {what} merged with it."
    lines = [f"**{start}** is in a group of **{lineage.size} {plural}** after layer {last}, built by "
             f"{len(lineage.events)} recorded merge{'s' if len(lineage.events) != 1 else ''}. Similarity: the score "
             "the method matched the pair with (for ToMe the cosine of the keys).",
             "", f"| {what} | joined {start}'s group in layer | similarity | first merged in layer | with | similarity |",
             "|---|---|---|---|---|---|"]
    partner: dict[int, tuple[int, ...]] = {}
    for event in lineage.events:  # the first merge of each member, in layer order
        for side, other in ((event.merged, event.into), (event.into, event.merged)):
            for t in side:
                partner.setdefault(t, other)
    layer_text = lambda l: "–" if l < 0 else str(int(l) + 1)  # noqa: E731
    sim_text = lambda v: "–" if np.isnan(v) else f"{v:.3f}"  # noqa: E731
    order = np.lexsort((lineage.members, lineage.reached))  # by layer, then input order
    for i in order[:MAX_ROWS]:
        t = int(lineage.members[i])
        mark = " (clicked)" if t == lineage.token else ""
        lines.append(f"| {names[t]}{mark} | {layer_text(lineage.reached[i])} | {sim_text(lineage.reached_similarity[i])} "
                     f"| {layer_text(lineage.joined[i])} | {_names(partner.get(t, ()), names) or '–'} "
                     f"| {sim_text(lineage.similarity[i])} |")
    if lineage.size > MAX_ROWS:
        lines.append(f"\n…and {lineage.size - MAX_ROWS} more {plural}.")
    return "\n".join(lines)
