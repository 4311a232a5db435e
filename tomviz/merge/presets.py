"""Named presets: a paper's setting of a method tomviz already has, under the paper's name.

**TinyChart** (Zhang et al., "TinyChart: Efficient Chart Understanding with Visual Token Merging and
Program-of-Thoughts Learning", EMNLP 2024), read from X-PLUG/mPLUG-DocOwl @f91a768, ``TinyChart/``:
``tinychart/model/multimodal_encoder/siglip_encoder.py`` ``SigLipEncoderLayerToMe.forward`` and
``SigLipAttentionToMe.forward``, ``merge.py`` (ToMe's ``bipartite_soft_matching``, ``merge_wavg``),
``scripts/vit_add_tome.py`` (``image_size`` 768, ``tome_r`` 84). It is ToMe inside SigLIP:

* every encoder layer merges ``r = 84`` tokens after the attention residual (the SigLIP-so400m
  encoder with its last layer removed: 26 layers), constant ``r``;
* metric = the layer's keys averaged over heads; no CLS (SigLIP has none): nothing protected;
* size-weighted merging and proportional attention (``log(size)`` added to the logits);
* 768 px at patch 14: 54 x 54 = 2916 patch tokens → 732 (:func:`constant_r_counts`).

* the unmerged A tokens stay in descending best-match order (ToMe's ``bipartite_soft_matching``
  with ``class_token=False`` never sorts them): ToMe's option ``order="score"``. tomviz's default
  (by position) decides the first layer alike, but the next layer splits A/B on another order, so the
  groups would differ from layer 2 on.

Run beside the original ``SigLipEncoderToMe`` (``trace_source`` on; transformers' ``SiglipVisionModel`` with the
same weights here) on 3 seeded inputs at a small shape (784 patches, r = 12, all 26 layers), in float64: the same
partitions and the same token order at 78/78 layers (ToMe's default position order: 3/78). In float32 the two
attention kernels round differently; a near tie in the best-match order then flips and the runs part after a
few layers (46/78 equal): the order itself is the original's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from tomviz.merge.request import MergeRequest


@dataclass(frozen=True)
class Preset:
    """A paper's setting of a registered method. :meth:`request` builds a fresh
    :class:`~tomviz.merge.request.MergeRequest` per call (never a shared, mutable one)."""

    name: str
    label: str
    method: str  # a tomviz.merge.registry name
    place: str  # "encoder" | "boundary" | "llm"
    r: int  # tokens removed per layer (constant)
    prop_attn: bool
    image_size: int  # the input size the authors use
    patch_size: int
    encoder_layers: int  # layers of the encoder that run (each merges r)
    num_protected: int = 0
    method_options: Mapping[str, Any] = field(default_factory=dict)  # the method's options for this paper

    def request(self) -> MergeRequest:
        return MergeRequest(method=self.method, method_options=dict(self.method_options), r=self.r,
                            schedule="constant", prop_attn=self.prop_attn, place=self.place)


TINYCHART = Preset(
    name="tinychart",
    label="TinyChart (ToMe in SigLIP, r = 84 per layer, proportional attention)",
    method="tome",
    place="encoder",
    r=84,  # scripts/vit_add_tome.py --tome_r 84
    prop_attn=True,  # SigLipAttentionToMe: attn_weights += size.log()
    image_size=768,  # scripts/vit_add_tome.py --image_size 768
    patch_size=14,
    encoder_layers=26,  # SigLIP-so400m's 27 layers minus the last (``del self.vision_model.encoder.layers[-1:]``)
    num_protected=0,  # SigLIP has no CLS: bipartite_soft_matching(class_token=False)
    method_options={"order": "score"},  # class_token=False: unmerged A tokens stay in best-match order
)

PRESETS: dict[str, Preset] = {TINYCHART.name: TINYCHART}


def constant_r_counts(num_tokens: int, r: int, num_layers: int, num_protected: int = 0) -> list[int]:
    """``[num_layers + 1]`` token counts under a constant ``r`` per layer, each step clipped to half
    the unprotected tokens as ToMe does (TinyChart: 2916, 2832, .., 732)."""
    counts = [num_tokens]
    for _ in range(num_layers):
        current = counts[-1]
        counts.append(current - min(r, (current - num_protected) // 2))
    return counts


def tinychart_ratio(num_tokens: int = 2916, num_layers: int = 26, r: int = 84) -> float:
    """The fraction of the patch tokens TinyChart's schedule removes (0.749 at 768 px)."""
    return 1.0 - constant_r_counts(num_tokens, r, num_layers)[-1] / num_tokens
