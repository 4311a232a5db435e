"""Tiny random transformers models that build offline: the one place tests make a model.

Every builder returns a model in eval mode with random weights, drawn after ``torch.manual_seed(seed)`` when
``seed`` is given, else from the current random state. The configs are small enough for a shared 2-core CPU
(32 wide, 4 layers, 4 heads); keyword arguments override any field of the model's config
(``num_hidden_layers=2``, ``patch_size=4``, ``initializer_range=0.1``...).

``classifier``: ``False`` gives the backbone; ``True`` adds an image-classification head with transformers'
default 2 classes, an ``int`` that many classes, a sequence of names those classes (``id2label``, ``label2id``).

The vision-language builders return ``(model, processor)`` in the layouts of transformers 5.24
(``SmolVLMForConditionalGeneration``, ``LlavaForConditionalGeneration``, ``LlavaOnevisionForConditionalGeneration``,
``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``),
with a word-level tokenizer built here (no hub files): the special tokens the processors insert, some words,
and ``<unk>`` for everything else.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

# [B, 3, 32, 32] images in 8 x 8 patches: CLS + 16 patch tokens
VISION = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)
# BERT-style text: [B, L] token ids below 120
TEXT = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, vocab_size=120)

Classes = bool | int | Sequence[str]


def _seed(seed: int | None) -> None:
    if seed is not None:
        torch.manual_seed(seed)


def _config(defaults: dict, overrides: dict, classifier: Classes = False) -> dict:
    """``defaults`` updated by ``overrides``, plus the label fields ``classifier`` asks for."""
    fields = {**defaults, **overrides}
    if isinstance(classifier, bool):
        return fields
    if isinstance(classifier, int):
        return {**fields, "num_labels": classifier}
    names = list(classifier)
    return {**fields, "num_labels": len(names), "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)}}


# ---- image encoders -------------------------------------------------------------------------------------------
def vit(*, classifier: Classes = False, pooling: bool = True, seed: int | None = None, **config) -> tf.PreTrainedModel:
    """``ViTModel`` (``pooling=False``: without the pooler, as ToMe's ViT) or ``ViTForImageClassification``."""
    fields = _config(VISION, config, classifier)
    _seed(seed)
    if classifier is not False:
        return tf.ViTForImageClassification(tf.ViTConfig(**fields)).eval()
    return tf.ViTModel(tf.ViTConfig(**fields), add_pooling_layer=pooling).eval()


def deit(*, classifier: Classes = False, seed: int | None = None, **config) -> tf.PreTrainedModel:
    """``DeiTModel`` or ``DeiTForImageClassificationWithTeacher``: CLS and a distillation token before the patches."""
    fields = _config(VISION, config, classifier)
    _seed(seed)
    if classifier is not False:
        return tf.DeiTForImageClassificationWithTeacher(tf.DeiTConfig(**fields)).eval()
    return tf.DeiTModel(tf.DeiTConfig(**fields)).eval()


def dinov2(*, registers: int = 0, classifier: Classes = False, seed: int | None = None, **config) -> tf.PreTrainedModel:
    """``Dinov2Model`` (MLP width from ``mlp_ratio``, not ``intermediate_size``), with ``registers`` register tokens
    after CLS (the ``Dinov2WithRegisters`` classes), or its ``...ForImageClassification``."""
    defaults = {k: v for k, v in VISION.items() if k != "intermediate_size"}
    fields = _config(defaults, config, classifier)
    _seed(seed)
    if registers:
        config_class = tf.Dinov2WithRegistersConfig
        fields["num_register_tokens"] = registers
        model_class = tf.Dinov2WithRegistersForImageClassification if classifier is not False else tf.Dinov2WithRegistersModel
    else:
        config_class = tf.Dinov2Config
        model_class = tf.Dinov2ForImageClassification if classifier is not False else tf.Dinov2Model
    return model_class(config_class(**fields)).eval()


def videomae(*, classifier: Classes = False, seed: int | None = None, **config) -> tf.PreTrainedModel:
    """``VideoMAEModel`` or ``VideoMAEForVideoClassification`` (mean pooling): 4 frames of 32² in tubelets of 2 →
    2 time steps of 4 x 4 patches = 32 tokens; inputs ``[B, 4, 3, 32, 32]``."""
    fields = _config({**VISION, "num_frames": 4, "tubelet_size": 2}, config, classifier)
    _seed(seed)
    model_class = tf.VideoMAEForVideoClassification if classifier is not False else tf.VideoMAEModel
    return model_class(tf.VideoMAEConfig(**fields)).eval()


def clip_vision(*, seed: int | None = None, **config) -> tf.CLIPVisionModel:
    """CLIP's image tower alone (``CLIPVisionModel``)."""
    fields = _config(VISION, config)
    _seed(seed)
    return tf.CLIPVisionModel(tf.CLIPVisionConfig(**fields)).eval()


def clip(*, text: dict | None = None, vision: dict | None = None, seed: int | None = None, **config) -> tf.CLIPModel:
    """``CLIPModel``: both towers; ``text`` and ``vision`` override their configs, ``config`` the joint one
    (``projection_dim``...)."""
    fields = dict(text_config=_config(TEXT, text or {}), vision_config=_config(VISION, vision or {}), **config)
    _seed(seed)
    return tf.CLIPModel(tf.CLIPConfig(**fields)).eval()


def xclip(*, frames: int = 4, text: dict | None = None, vision: dict | None = None, seed: int | None = None,
          **config) -> tf.XCLIPModel:
    """``XCLIPModel`` for clips of exactly ``frames`` frames (its vision tower's message tokens and its multi-frame
    integration transformer are built for that count); ``text``/``vision`` override the towers' configs."""
    mit = dict(mit_hidden_size=16, mit_intermediate_size=32, mit_num_hidden_layers=1, mit_num_attention_heads=2)
    fields = dict(text_config=_config(TEXT, text or {}), vision_config=_config({**VISION, **mit, "num_frames": frames}, vision or {}),
                  projection_dim=16, prompt_layers=1, prompt_num_attention_heads=2, **config)
    _seed(seed)
    return tf.XCLIPModel(tf.XCLIPConfig(**fields)).eval()


# ---- text encoders --------------------------------------------------------------------------------------------
def bert(*, seed: int | None = None, **config) -> tf.BertModel:
    """``BertModel``, also MiniLM's architecture (``vocab_size=tokenizer.vocab_size`` pairs it with MiniLM's tokenizer)."""
    fields = _config(TEXT, config)
    _seed(seed)
    return tf.BertModel(tf.BertConfig(**fields)).eval()


def roberta(*, seed: int | None = None, **config) -> tf.RobertaModel:
    """``RobertaModel`` (positions start after the padding index)."""
    fields = _config(TEXT, config)
    _seed(seed)
    return tf.RobertaModel(tf.RobertaConfig(**fields)).eval()


def gpt2(*, seed: int | None = None, **config) -> tf.GPT2Model:
    """``GPT2Model``: a family tomviz does not support (its loading errors name it)."""
    fields = {**dict(n_embd=32, n_layer=1, n_head=2, vocab_size=50), **config}
    _seed(seed)
    return tf.GPT2Model(tf.GPT2Config(**fields)).eval()


# ---- vision-language models -----------------------------------------------------------------------------------
WORDS = "a the cat dog on mat what is in this image ? . , picture describe colour red blue User Assistant : \n".split(" ")
SMOL_SPECIAL = ["<unk>", "<pad>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>", "<image>"]
LLAVA_SPECIAL = ["<unk>", "<pad>", "</s>", "<image>"]
VOCAB_SIZE = 200


def word_tokenizer(special: list[str], **named: str) -> tf.PreTrainedTokenizerFast:
    """Word-level tokenizer: special tokens first, then ``<row_i_col_j>`` tiles, words, filler up to ``VOCAB_SIZE``."""
    tiles = [f"<row_{i}_col_{j}>" for i in range(1, 5) for j in range(1, 5)]
    words = [w for w in WORDS if w]
    names = special + tiles + words
    names += [f"w{i}" for i in range(VOCAB_SIZE - len(names))]
    vocab = {name: i for i, name in enumerate(names)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="removed")
    tok.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", **named)
    fast.add_special_tokens({"additional_special_tokens": special[2:] + tiles})
    return fast


def vision_tower(layers: int, image_size: int, patch: int, **fields) -> dict:
    """The config of a VLM's image encoder: 32 wide, 2 heads, ``(image_size / patch)²`` patches."""
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
                image_size=image_size, patch_size=patch, **fields)


def llm(layers: int, **fields) -> dict:
    """The config of a VLM's language model: 32 wide, 4 query heads sharing 2 key/value heads, ``VOCAB_SIZE`` words."""
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=VOCAB_SIZE, pad_token_id=1, **fields)


def smolvlm(image_size: int = 64, patch: int = 8, scale: int = 2, vision_layers: int = 2, text_layers: int = 3):
    """(model, processor): SmolVLM with a ``image_size`` px tile, ``(image_size/patch)²`` patches, pixel shuffle ``scale``."""
    from tomviz.models.smolvlm import processor_without_video

    words = word_tokenizer(SMOL_SPECIAL, eos_token="<end_of_utterance>")
    config = tf.SmolVLMConfig(vision_config=vision_tower(vision_layers, image_size, patch), text_config=llm(text_layers),
                              scale_factor=scale, image_token_id=words.convert_tokens_to_ids("<image>"))
    model = tf.SmolVLMForConditionalGeneration(config).eval()
    image_processor = tf.SmolVLMImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size},
    )
    seq_len = (image_size // patch) ** 2 // scale**2
    return model, processor_without_video(image_processor, words, seq_len)  # no torchvision here


def llava(image_size: int = 32, patch: int = 8, vision_layers: int = 2, text_layers: int = 3, tower: str = "siglip"):
    """(model, processor): LLaVA with a SigLIP (or CLIP) tower and a Qwen2 (or Llama) LLM; one token per patch."""
    words = word_tokenizer(LLAVA_SPECIAL, eos_token="</s>")
    if tower == "siglip":
        vision_type, strategy, extra, text_type = "siglip_vision_model", "full", 0, "qwen2"
    else:
        vision_type, strategy, extra, text_type = "clip_vision_model", "default", 1, "llama"
    config = tf.LlavaConfig(
        vision_config=vision_tower(vision_layers, image_size, patch, model_type=vision_type),
        text_config=dict(model_type=text_type, **llm(text_layers)),
        image_token_id=words.convert_tokens_to_ids("<image>"), vision_feature_select_strategy=strategy, vision_feature_layer=-1,
    )
    model = tf.LlavaForConditionalGeneration(config).eval()
    image_processor = tf.CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=words, patch_size=patch,
                                  vision_feature_select_strategy=strategy, num_additional_image_tokens=extra)
    return model, processor


def onevision(image_size: int = 32, patch: int = 8, vision_layers: int = 2, text_layers: int = 3):
    """(model, processor): LLaVA-OneVision (SigLIP + Qwen2) with anyres tiles of ``image_size`` px, up to 2x2."""
    from tomviz.models.vlm import image_only

    words = word_tokenizer(LLAVA_SPECIAL + ["<video>"], eos_token="</s>")
    s = image_size
    config = tf.LlavaOnevisionConfig(
        vision_config=vision_tower(vision_layers, s, patch, model_type="siglip_vision_model"),
        text_config=dict(model_type="qwen2", **llm(text_layers)),
        image_token_id=words.convert_tokens_to_ids("<image>"), video_token_id=words.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]],
        vision_feature_layer=-1, vision_feature_select_strategy="full",
    )
    model = tf.LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = tf.LlavaOnevisionImageProcessorPil(size={"height": s, "width": s}, image_grid_pinpoints=config.image_grid_pinpoints)
    processor = image_only(tf.LlavaOnevisionProcessor)(image_processor=image_processor, tokenizer=words, video_processor=None,
                                                       num_image_tokens=(s // patch) ** 2, vision_feature_select_strategy="full")
    return model, processor


QWEN_SPECIAL = ["<unk>", "<pad>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def qwen2_vl(version: str = "2", patch: int = 4, vision_layers: int = 2, text_layers: int = 3, max_pixels: int = 32 * 32,
             seed: int | None = None):
    """(model, processor): Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``: window attention of 16 px in its
    first vision block, full attention in the second) with ``patch`` px patches merged 2 x 2 into LLM tokens, images
    resized to at most ``max_pixels`` pixels, and multimodal RoPE sections ``(2, 1, 1)`` of the 4 frequencies of
    the LLM's 8-wide heads."""
    from tomviz.models.vlm import image_only

    words = word_tokenizer(QWEN_SPECIAL, eos_token="<|im_end|>")
    ids = {name: words.convert_tokens_to_ids(name) for name in QWEN_SPECIAL}
    vision = dict(depth=vision_layers, hidden_size=32, num_heads=2, patch_size=patch, spatial_merge_size=2,
                  temporal_patch_size=2)
    if version == "2.5":
        vision.update(intermediate_size=64, out_hidden_size=32, window_size=16, fullatt_block_indexes=[vision_layers - 1])
        config_class, model_class, processor_class = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLProcessor
    else:
        vision.update(embed_dim=32, mlp_ratio=2)
        config_class, model_class, processor_class = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor
    text = llm(text_layers, rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
               bos_token_id=None, eos_token_id=ids["<|im_end|>"])
    config = config_class(vision_config=vision, text_config=text, image_token_id=ids["<|image_pad|>"],
                          video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                          vision_end_token_id=ids["<|vision_end|>"])
    _seed(seed)
    model = model_class(config).eval()
    image_processor = tf.Qwen2VLImageProcessorPil(min_pixels=4 * patch * patch, max_pixels=max_pixels, patch_size=patch,
                                                  merge_size=2, temporal_patch_size=2)
    return model, image_only(processor_class)(image_processor=image_processor, tokenizer=words, video_processor=None)


def photo(size: int = 80, seed: int = 0):
    """A small RGB PIL image with some structure (blocks of colour plus noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 255, (4, 4, 3)), np.ones((size // 4, size // 4, 1)))
    noisy = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype("uint8")
    return Image.fromarray(noisy)


def saved_smolvlm(folder):
    """A tiny SmolVLM saved as a model folder (weights, tokenizer, image processor, ``image_seq_len``): what
    ``tomviz.load`` and the CLI read, as they read a hub id's files. Returns ``folder``."""
    import json

    model, processor = smolvlm()
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps({"image_seq_len": processor.image_seq_len}))
    return folder
