"""Token reduction inside vision-language models: where, what the LLM then sees, and what it answers.

Three places to reduce the visual tokens (``place``):

* ``"encoder"``: any merge method of ``tomviz.METHODS`` inside the vision encoder. SmolVLM's
  pixel shuffle and Qwen2-VL's 2 x 2 merger need every patch, so merged tokens are copied back to
  their patches after the encoder (the encoder saves compute, the LLM sees the usual count; Qwen2-VL
  merges within images and Qwen2.5-VL within attention windows: ``tomviz/models/qwen2_vl_vision.py``);
  LLaVA's projector works per token, so the LLM receives the merged tokens;
* ``"boundary"``: on the tokens the LLM receives (``tomviz.merge.visual``: ``tome``, ``random_prune``,
  ``downsample``, ``hiprune``, ...); merged tokens carry their size into the LLM's attention as a
  ``log(size)`` bias through its mask (``prop_attn``). Two methods give the LLM's tokens themselves, in
  their authors' order and without the bias: ``visionzip`` (before LLaVA's projector, per crop, on the
  encoder's layer -2: :func:`tomviz.vlm.encode.encode_before_projector`) and ``aim`` (plain-mean merging);
* ``"llm"``: FastV inside the LLM at layer ``K`` (``fastv_layer``), AIM's PageRank pruning with the
  authors' layer schedule (masking; ``method_options={"drop": True}`` removes the tokens instead), or
  MustDrop (LLaVA with a CLS token), whose four stages span the model (:mod:`tomviz.vlm.mustdrop`):
  window merging after the encoder's first layer, the key set, dual-attention filtering inside the LLM
  with renumbered positions, and the KV-cache eviction while decoding.

With ``vtu=True`` (boundary, or LLaVA's encoder merging) the LLM gets DyMU's virtual token
unmerging instead of the log-size bias: it computes on the merged tokens, but every attention
sees each merged token once per member at its members' RoPE positions
(:func:`tomviz.models.llm.vtu_attention`), so it stays close to the unreduced model. VTU needs a
plan that only merges (no pruned tokens) and a rotary LLM.

Each place is traced as a stage with the same :class:`~tomviz.trace.Trace` type:
``stages["encoder"]`` (the patches of tile 0 through the encoder layers), ``stages["boundary"]``
(the visual tokens → the tokens the LLM receives) and ``stages["llm"]`` (the visual tokens the
LLM receives → those layers ≥ K keep; AIM: one layer per LLM layer). The tokens are laid out per tile (``meta["token_grid"]``,
``meta["num_tiles"]``), tile-major and row-major, as the model's sequence orders them.

The reduced sequence keeps the text tokens and puts each visual group where its first
member sat; positions are renumbered contiguously (as VisionZip does), except under
FastV where the kept tokens keep their positions, and in Qwen2-VL / Qwen2.5-VL, whose kept tokens keep
their original multimodal-RoPE ids (``tomviz/models/qwen2_vl.py``).

The flow of one request, one module per stage:

* :mod:`tomviz.vlm.reduction`: where and how much (:class:`Reduction`);
* :mod:`tomviz.vlm.inputs`: image + question → the processor's tensors (:func:`prepare`);
* :mod:`tomviz.vlm.encode`: the vision encoder and connector (:func:`encode`);
* :mod:`tomviz.vlm.sequence`: the boundary reduction and the LLM's input sequence (:func:`to_prefill`);
* :mod:`tomviz.vlm.decode`: greedy decoding, teacher forcing, the answer's log-likelihood game;
* :mod:`tomviz.vlm.result`: both runs side by side (:func:`inspect_vlm` → :class:`VLMResult`).

A clip and a question (LLaVA-OneVision, SmolVLM2): :func:`ask_video` → :class:`VideoAnswer`, with a temporal
method at the boundary and FastV, HoliTom's inner merge or DyCoke's cache pruning inside the LLM
(:mod:`tomviz.vlm.video`, :mod:`tomviz.vlm.video_inputs`, :mod:`tomviz.vlm.video_result`).
"""
from __future__ import annotations

from tomviz.vlm.decode import Generation, TeacherForced, first_token_kl, generate, teacher_forced
from tomviz.vlm.encode import Encoded, encode
from tomviz.vlm.inputs import VLMInput, prepare
from tomviz.vlm.reduction import PLACES, Reduction
from tomviz.vlm.result import AnswerFidelity, VLMResult, inspect_vlm
from tomviz.vlm.sequence import Prefill, build_prefill, to_prefill, virtual_tokens
from tomviz.vlm.video import VideoStages
from tomviz.vlm.video_result import VideoAnswer, ask_video

__all__ = [
    "PLACES", "AnswerFidelity", "Encoded", "Generation", "Prefill", "Reduction", "TeacherForced", "VLMInput",
    "VLMResult", "build_prefill", "encode", "first_token_kl", "generate", "inspect_vlm", "prepare", "teacher_forced",
    "to_prefill", "virtual_tokens", "VideoAnswer", "VideoStages", "ask_video",
]
