"""Text-side views of a trace: coloured tokens, group tables, markdown summaries (no gradio)."""
from __future__ import annotations

from typing import Any

import numpy as np

from tomviz.fidelity import EmbeddingFidelity
from tomviz.trace import Trace


def display_pieces(tokens: list[str]) -> list[str]:
    """Word-piece tokens → display strings with the spaces between words (``##ing`` → ``ing``)."""
    out = []
    for i, tok in enumerate(tokens):
        if tok.startswith("##"):
            out.append(tok[2:])
        elif tok.startswith("Ġ") or tok.startswith("▁"):  # RoBERTa / SentencePiece word starts
            out.append(" " + tok[1:])
        elif i == 0 or (len(tok) == 1 and tok in ".,;:!?)]}'\""):
            out.append(tok)  # no space before punctuation
        else:
            out.append(" " + tok)
    return out


def _members(tokens: list[str], groups: np.ndarray) -> dict[int, list[str]]:
    """Group id → its input tokens, in input order (pruned tokens left out); consecutive word pieces of one
    word in the same group read as that word ("token" + "##s" → "tokens")."""
    members: dict[int, list[str]] = {}
    for idx, g in enumerate(groups):
        if g < 0:
            continue
        words = members.setdefault(int(g), [])
        if tokens[idx].startswith("##") and idx > 0 and groups[idx - 1] == g and words:
            words[-1] += tokens[idx][2:]  # a word piece right after its word's start, in the same group: one word
        else:
            words.append(tokens[idx])
    return members


def group_names(trace: Trace, layer: int, entering: bool = False, max_chars: int = 40) -> list[str]:
    """Short labels such as ``"g3: the · dog"``: ``[N_l]`` for the groups after ``layer`` (0-based),
    or ``[N_{l-1}]`` for the tokens entering it (``entering=True``, as CLS attention is recorded)."""
    tokens = trace.meta["tokens"]
    groups = trace.groups_entering(layer) if entering else trace.groups(layer)  # [N0]
    count = trace.layers[layer].num_tokens_in if entering else trace.layers[layer].num_tokens
    members = _members(tokens, groups)
    names = []
    for g in range(count):
        text = " · ".join(members.get(g, ["(pruned)"]))
        names.append(f"g{g}: " + (text if len(text) <= max_chars else text[: max_chars - 1] + "…"))
    return names


SELECTED_LABEL = "selected group"


def token_highlights(trace: Trace, layer: int, token: int | None = None) -> list[tuple[str, str | None]]:
    """``[(text, label)]`` for every input token (gr.HighlightedText's value): tokens that share a
    merged group share a label ``"group g (n tokens)"``; tokens still alone get no label. With ``token``
    (an input token index), its group is labelled ``SELECTED_LABEL`` and the other groups are unlabelled."""
    tokens = trace.meta["tokens"]
    groups = trace.groups(layer)  # [N0]
    sizes = trace.sizes(layer)  # [N_l]
    out: list[tuple[str, str | None]] = []
    for piece, g in zip(display_pieces(tokens), groups):
        if g < 0:
            out.append((piece, "pruned"))
        elif token is not None:
            out.append((piece, SELECTED_LABEL if g == groups[token] else None))
        elif sizes[g] > 1:
            out.append((piece, f"group {int(g)} ({int(sizes[g])} tokens)"))
        else:
            out.append((piece, None))
    return out


def group_table(trace: Trace, layer: int) -> list[list[Any]]:
    """Rows ``[group id, size, tokens]`` after ``layer``, largest groups first."""
    tokens = trace.meta["tokens"]
    groups = trace.groups(layer)
    sizes = trace.sizes(layer)
    members = _members(tokens, groups)
    rows = [[g, int(sizes[g]), " · ".join(members.get(g, []))] for g in range(len(sizes))]
    rows.sort(key=lambda row: (-row[1], row[0]))
    return rows


def group_cls_attention(trace: Trace, layer: int) -> np.ndarray | None:
    """``[N_{l-1}]`` CLS attention received by each token entering ``layer`` (None if not traced)."""
    return trace.layers[layer].cls_attention


def speed_markdown(speed: Any) -> str:
    """A short markdown summary of a :class:`tomviz.speed.SpeedReport`."""
    return (
        f"**Latency on {speed.device}**: merged **{speed.merged_s * 1e3:.1f} ms**, unmerged {speed.unmerged_s * 1e3:.1f} ms "
        f"(medians of the last {speed.runs} and {speed.baseline_runs} runs; more accumulate as you explore; "
        f"merged runs are the traced ones, so the speed-up is slightly understated) → "
        f"speed-up **{speed.speedup:.2f}×**  \n"
        f"**Analytic GFLOPs** (layers only, 1 multiply-add = 2 FLOPs): merged {speed.merged_gflops_total:.2f}, "
        f"unmerged {speed.unmerged_gflops_total:.2f} → {speed.flops_ratio:.2f}× fewer"
    )


def fidelity_markdown(fidelity: EmbeddingFidelity) -> str:
    """Markdown for an input's fidelity (``Analysis.fidelity``)."""
    lines = [f"**Cosine similarity of the final embedding** ({fidelity.embedding}) to the unmerged run: "
             f"**{fidelity.cosine:.4f}**"]
    if fidelity.top_merged:
        lines.append("\n| rank | merged | p | unmerged | p |\n|---|---|---|---|---|")
        for i, ((lm, pm), (lu, pu)) in enumerate(zip(fidelity.top_merged, fidelity.top_unmerged), 1):
            lines.append(f"| {i} | {lm} | {pm:.3f} | {lu} | {pu:.3f} |")
    return "\n".join(lines)
