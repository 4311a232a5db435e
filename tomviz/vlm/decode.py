"""The language model's side of a request: greedy decoding with the KV cache, teacher forcing of a
given answer, the first token's KL, and the answer's log-likelihood as a game over the visual tokens."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from tomviz.models.mustdrop import MustDropRequest
from tomviz.models.vlm import LoadedVLM
from tomviz.vlm.sequence import Prefill


@dataclass
class Generation:
    tokens: list[int]  # the answer's token ids (without the prompt; with the stop token if one came)
    text: str
    first_logits: torch.Tensor  # [vocab] float32, the logits of the first answer token
    prefill_seconds: float
    decode_seconds: float
    llm_visual_tokens: list[int]  # visual tokens per LLM layer
    keep: torch.Tensor | None  # FastV: prefill positions kept from layer K
    active: list[torch.Tensor] | None = None  # AIM: per LLM layer [L] bool, the prefill keys left after it
    mustdrop: MustDropRequest | None = None  # MustDrop: the request as the call filled it (``kept`` per pruning layer)
    folded: torch.Tensor | None = None  # HoliTom's inner merge: [V] the kept visual token (index among them) each joined
    dycoke_steps: list[torch.Tensor | None] | None = None  # DyCoke: per decoding step, the visual tokens attended to


def stop_ids(loaded: LoadedVLM) -> set[int]:
    ids = set()
    for source in (loaded.tokenizer, getattr(loaded.model, "generation_config", None)):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update([value] if isinstance(value, int) else list(value))
    return ids


def generate(loaded: LoadedVLM, prefill: Prefill, max_new_tokens: int = 24) -> Generation:
    """Greedy decoding at batch 1 with the KV cache, under the prefill's reduction."""
    model = loaded.model
    stop = stop_ids(loaded)
    state = prefill.llm_state()
    tokens: list[int] = []
    with torch.inference_mode(), state:
        start = time.perf_counter()
        length = prefill.embeds.shape[1]
        out = model(inputs_embeds=prefill.embeds, use_cache=True, logits_to_keep=1, **prefill.position_ids(length))
        first_logits = out.logits[0, -1].float()
        token = int(first_logits.argmax())
        prefill_seconds = time.perf_counter() - start
        cache = out.cache
        start = time.perf_counter()
        tokens.append(token)
        while len(tokens) < max_new_tokens and token not in stop:
            step = torch.tensor([[token]], device=prefill.embeds.device)
            end = length + len(tokens)  # the step token sits at end - 1
            out = model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1, **prefill.position_ids(end, end - 1))
            cache = out.cache
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
        decode_seconds = time.perf_counter() - start
    num_layers = len(loaded.language_model.layers)
    visual_count = int(prefill.visual.sum())
    counts = [visual_count] * num_layers
    if prefill.fastv is not None:
        counts = [visual_count] * prefill.fastv.layer + [prefill.fastv.keep] * (num_layers - prefill.fastv.layer)
    if prefill.aim is not None:  # the visual keys each layer attends to
        counts = [visual_count] + [int((active & prefill.visual).sum()) for active in state.active[:-1]]
    if state.mustdrop is not None:  # the visual tokens entering each layer
        counts = [visual_count if held is None else int(prefill.visual[held].sum())
                  for held in (state.mustdrop.entering(index, prefill=True) for index in range(num_layers))]
    text = loaded.tokenizer.decode([t for t in tokens if t not in stop], skip_special_tokens=True).strip()
    return Generation(tokens=tokens, text=text, first_logits=first_logits, prefill_seconds=prefill_seconds,
                      decode_seconds=decode_seconds, llm_visual_tokens=counts, keep=state.keep,
                      active=state.active if prefill.aim is not None else None, mustdrop=state.mustdrop,
                      folded=state.folded, dycoke_steps=None if state.dycoke is None else state.dycoke.steps)


@dataclass
class TeacherForced:
    log_probs: torch.Tensor  # [A] log p of each answer token
    first_logits: torch.Tensor  # [vocab]
    attention: list[torch.Tensor]  # per layer [A, L'] (when recorded)
    keep: torch.Tensor | None  # FastV: kept positions of the sequence


def teacher_forced(loaded: LoadedVLM, prefill: Prefill, answer: list[int], record_attention: bool = False) -> TeacherForced:
    """One forward over the prompt + ``answer`` (no cache): the log-probability of each answer
    token, and with ``record_attention`` the attention of each answer step (the position that
    predicts the token) to every token, per LLM layer, mean over heads."""
    answer = answer or [int(loaded.tokenizer.eos_token_id or 0)]
    ids = torch.tensor([answer], device=prefill.embeds.device)
    with torch.inference_mode():
        embeds = torch.cat([prefill.embeds, loaded.language_model.get_input_embeddings()(ids)], dim=1)
        length = prefill.embeds.shape[1]
        visual = torch.cat([prefill.visual, torch.zeros(len(answer), dtype=torch.bool, device=embeds.device)])
        bias = None
        if prefill.key_bias is not None:
            bias = torch.cat([prefill.key_bias, torch.zeros(len(answer), device=embeds.device)])
        queries = torch.arange(length - 1, length - 1 + len(answer), device=embeds.device) if record_attention else None
        fastv = None if prefill.fastv is None else replace(prefill.fastv, query=length - 1)  # decided by the last prompt token
        aim = None if prefill.aim is None else replace(prefill.aim, length=length)  # ranked on the prompt alone
        mustdrop = None if prefill.mustdrop is None else replace(prefill.mustdrop, length=length)  # rows: the prompt's
        state = prefill.llm_state(visual=visual, key_bias=bias, fastv=fastv, aim=aim, mustdrop=mustdrop,
                                  record_queries=queries)
        with state:
            positions = prefill.position_ids(embeds.shape[1])
            logits = loaded.model(inputs_embeds=embeds, use_cache=False, **positions).logits[0].float()  # [L'', vocab]
    steps = logits[-(len(answer) + 1):-1]  # [A, vocab] the logits that predict each answer token
    log_probs = steps.log_softmax(-1).gather(1, ids[0][:, None])[:, 0]
    return TeacherForced(log_probs=log_probs, first_logits=steps[0], attention=state.attention, keep=state.keep)


def first_token_kl(reference: torch.Tensor, reduced: torch.Tensor) -> float:
    """KL(p_ref || p_red) of two logit vectors ``[vocab]``."""
    p = reference.float().log_softmax(-1)
    q = reduced.float().log_softmax(-1)
    return float((p.exp() * (p - q)).sum())


def answer_game(loaded: LoadedVLM, prefill: Prefill, answer: list[int]) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """The game whose players are the visual tokens the LLM receives (FastV and AIM's pruning are not applied).

    Value of a coalition: the teacher-forced log-probability of ``answer`` when only the coalition's
    visual tokens are present (the others are masked out of every attention, positions kept).
    Returns ``(value, n)``: ``value(masks [M, n] bool) → [M]`` and the number of players ``n``.
    """
    answer = answer or [int(loaded.tokenizer.eos_token_id or 0)]
    ids = torch.tensor([answer], device=prefill.embeds.device)
    visual_positions = prefill.visual.nonzero()[:, 0]  # [n] the players' sequence positions
    with torch.inference_mode():
        embeds = torch.cat([prefill.embeds, loaded.language_model.get_input_embeddings()(ids)], dim=1)  # [1, L, C]
    length = embeds.shape[1]
    visual = torch.cat([prefill.visual, torch.zeros(len(answer), dtype=torch.bool, device=embeds.device)])
    base = torch.zeros(length, device=embeds.device)
    if prefill.key_bias is not None:
        base[: prefill.key_bias.shape[0]] = prefill.key_bias
    absent_bias = torch.finfo(torch.float32).min / 4
    positions = prefill.position_ids(length)

    def value(masks: np.ndarray) -> np.ndarray:
        present = torch.as_tensor(masks, device=embeds.device)  # [M, n]
        bias = base.expand(len(masks), -1).clone()  # [M, L]
        bias[:, visual_positions] = torch.where(present, bias[:, visual_positions], absent_bias)
        with torch.inference_mode(), prefill.llm_state(visual=visual, key_bias=bias, fastv=None, aim=None, mustdrop=None):
            batch = {name: ids_3d.expand(-1, len(masks), -1) for name, ids_3d in positions.items()}  # [3, M, L]
            logits = loaded.model(inputs_embeds=embeds.expand(len(masks), -1, -1), use_cache=False, **batch).logits.float()
        steps = logits[:, -(len(answer) + 1):-1]  # [M, A, vocab]
        logp = steps.log_softmax(-1).gather(2, ids.expand(len(masks), -1)[..., None])[..., 0]  # [M, A]
        return logp.sum(1).cpu().numpy()

    return value, int(visual_positions.numel())
