"""A vision-language request's input: image + question → the processor's tensors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tomviz.inputs.image import load_image
from tomviz.models.vlm import LoadedVLM


@dataclass
class VLMInput:
    """The processor's tensors for one image and question, and their description."""

    tensors: dict[str, torch.Tensor]  # input_ids [1, L], attention_mask, pixel_values, ...
    prompt: str
    question: str
    image: Any  # the RGB PIL image
    meta: dict[str, Any] = field(default_factory=dict)


def prepare(loaded: LoadedVLM, image: Any, question: str) -> VLMInput:
    """Image (PIL / path / bytes / array) and question → the processor's tensors."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty: type a question about the image")
    picture = load_image(image)
    processor = loaded.processor
    template = getattr(processor, "chat_template", None) or getattr(loaded.tokenizer, "chat_template", None)
    if template:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    else:
        token = getattr(processor, "image_token", "<image>")
        prompt = f"User: {token} {question}\nAssistant:"
    images = [[picture]] if loaded.adapter.nested_images else [picture]
    try:
        tensors = processor(text=[prompt], images=images, return_tensors="pt")
    except Exception as err:  # noqa: BLE001 - processors raise many types for images they refuse
        raise ValueError(f"the processor of {loaded.name} refused the image: {err}") from err
    length = int(tensors["input_ids"].shape[1])
    if length > loaded.max_length:
        raise ValueError(f"the prompt is {length} tokens with the image; {loaded.name} takes at most {loaded.max_length}")
    device = loaded.device
    tensors = {k: v.to(device) for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    if "pixel_values" in tensors:
        tensors["pixel_values"] = tensors["pixel_values"].to(loaded.model.dtype)
    return VLMInput(tensors=tensors, prompt=prompt, question=question, image=picture,
                    meta={"image_size": [picture.width, picture.height], "num_prompt_tokens": length})
