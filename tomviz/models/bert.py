"""BERT-family text encoders (BERT, MiniLM, RoBERTa, ... : ``encoder.layer`` of ``BertLayer``-like blocks).

Post-norm blocks: the merge goes between the attention sub-layer (whose output
is already normalised) and the feed-forward sub-layer. Protected: CLS. Padding
never merges with real tokens and the attention mask follows the merges
(see ``MergeState``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from tomviz.merge.engine import MergeState
from tomviz.models.adapter import Adapter, load_with_tokenizer, position_limit, register
from tomviz.models.blocks import attend, merge


def _find(model: nn.Module) -> nn.Module | None:
    """The module that owns ``embeddings`` and ``encoder.layer`` with BERT-style self-attention."""
    candidates = [model] + [getattr(model, name, None) for name in ("bert", "roberta", "base_model", "model")]
    for candidate in candidates:
        if not isinstance(candidate, PreTrainedModel):
            continue
        layers = getattr(getattr(candidate, "encoder", None), "layer", None)
        if not layers or not hasattr(candidate, "embeddings"):
            continue
        attn = getattr(layers[0], "attention", None)
        if hasattr(getattr(attn, "self", None), "key") and hasattr(layers[0], "feed_forward_chunk"):
            if getattr(candidate.config, "is_decoder", False):
                return None
            return candidate
    return None


def bert_block(
    block: nn.Module,
    state: MergeState,
    index: int,
    num_heads: int,
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    **kwargs: Any,
) -> torch.Tensor:
    """Adapted from transformers 5.24 ``BertLayer.forward`` (``models/bert/modeling_bert.py``).

    Changes: the mask comes from the merge state; ``state.after_attention`` merges the
    attention output before the feed-forward chunk, given the attention's keys and queries;
    no cross-attention, no cache, no chunking. hidden: ``[B, N, C]`` → ``[B, N - r, C]``.
    """
    mask = state.attention_mask(mask, hidden)
    (h, _), projections = attend(block.attention, hidden, mask, **kwargs)
    h = merge(state, index, num_heads, h, projections)
    return block.feed_forward_chunk(h)


# RoBERTa-style position ids start after the padding index: two positions fewer for tokens
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert"}


def _max_positions(backbone: nn.Module) -> int:
    """The longest input in tokens (``max_position_embeddings``, less the offset RoBERTa-style models use)."""
    offset = 2 if getattr(backbone.config, "model_type", "") in _OFFSET_POSITIONS else 0
    return position_limit(backbone) - offset


BERT = register(
    Adapter(
        family="bert",
        modality="text",
        label="BERT-family",
        model_types=frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "data2vec-text"}),
        load=load_with_tokenizer,
        max_positions=_max_positions,
        find_backbone=_find,
        blocks=lambda backbone: list(backbone.encoder.layer),
        num_protected=lambda backbone: 1,
        key_proj=lambda block: block.attention.self.key,
        query_proj=lambda block: block.attention.self.query,
        block_forward=bert_block,
    )
)
