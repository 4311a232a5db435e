"""Tiny random vision-language models and processors that build offline (REFERENCES §7).

The tokenizer is a word-level vocabulary built here (no hub files): the special tokens
the processors insert, some words, and ``<unk>`` for everything else.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = "a the cat dog on mat what is in this image ? . , picture describe colour red blue User Assistant : \n".split(" ")
SMOL_SPECIAL = ["<unk>", "<pad>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>", "<image>"]
LLAVA_SPECIAL = ["<unk>", "<pad>", "</s>", "<image>"]
VOCAB_SIZE = 200


def tiny_tokenizer(special: list[str], **named: str) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: special tokens first, then ``<row_i_col_j>`` tiles, words, filler."""
    tiles = [f"<row_{i}_col_{j}>" for i in range(1, 5) for j in range(1, 5)]
    words = [w for w in WORDS if w]
    names = special + tiles + words
    names += [f"w{i}" for i in range(VOCAB_SIZE - len(names))]
    vocab = {name: i for i, name in enumerate(names)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="removed")
    tok.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", **named)
    fast.add_special_tokens({"additional_special_tokens": special[2:] + tiles})
    return fast


def smolvlm(image_size: int = 64, patch: int = 8, scale: int = 2, vision_layers: int = 2, text_layers: int = 3):
    """(model, processor): SmolVLM with a ``image_size`` px tile, ``(image_size/patch)²`` patches, pixel shuffle ``scale``."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil

    from tomviz.models.smolvlm import processor_without_video

    tokenizer = tiny_tokenizer(SMOL_SPECIAL, eos_token="<end_of_utterance>")
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = SmolVLMConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers, num_attention_heads=2,
                           image_size=image_size, patch_size=patch),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB_SIZE, pad_token_id=1),
        scale_factor=scale, image_token_id=image_token_id,
    )
    model = SmolVLMForConditionalGeneration(config).eval()
    image_processor = SmolVLMImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size},
    )
    seq_len = (image_size // patch) ** 2 // scale**2

    processor = processor_without_video(image_processor, tokenizer, seq_len)  # no torchvision here
    return model, processor


def llava(image_size: int = 32, patch: int = 8, vision_layers: int = 2, text_layers: int = 3, tower: str = "siglip"):
    """(model, processor): LLaVA with a SigLIP (or CLIP) tower and a Qwen2 (or Llama) LLM; one token per patch."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = tiny_tokenizer(LLAVA_SPECIAL, eos_token="</s>")
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers, num_attention_heads=2,
                  image_size=image_size, patch_size=patch)
    if tower == "siglip":
        vision["model_type"] = "siglip_vision_model"
        strategy, extra, text_type = "full", 0, "qwen2"
    else:
        vision["model_type"] = "clip_vision_model"
        strategy, extra, text_type = "default", 1, "llama"
    config = LlavaConfig(
        vision_config=vision,
        text_config=dict(model_type=text_type, hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB_SIZE, pad_token_id=1),
        image_token_id=image_token_id, vision_feature_select_strategy=strategy, vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy=strategy, num_additional_image_tokens=extra)
    return model, processor


def onevision(image_size: int = 32, patch: int = 8, vision_layers: int = 2, text_layers: int = 3):
    """(model, processor): LLaVA-OneVision (SigLIP + Qwen2) with anyres tiles of ``image_size`` px, up to 2x2."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessorPil,
                              LlavaOnevisionProcessor)

    from tomviz.models.vlm import image_only

    tokenizer = tiny_tokenizer(LLAVA_SPECIAL + ["<video>"], eos_token="</s>")
    s = image_size
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=vision_layers, num_attention_heads=2, image_size=s, patch_size=patch),
        text_config=dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB_SIZE, pad_token_id=1),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]],
        vision_feature_layer=-1, vision_feature_select_strategy="full",
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": s, "width": s}, image_grid_pinpoints=config.image_grid_pinpoints)
    processor = image_only(LlavaOnevisionProcessor)(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                                    num_image_tokens=(s // patch) ** 2, vision_feature_select_strategy="full")
    return model, processor


def photo(size: int = 80, seed: int = 0):
    """A small RGB PIL image with some structure (blocks of colour plus noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 255, (4, 4, 3)), np.ones((size // 4, size // 4, 1)))
    noisy = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype("uint8")
    return Image.fromarray(noisy)
