"""Text encoder nodes: load Gemma-2 for Sana, encode prompts into CONDITIONING."""

from __future__ import annotations

import torch

from .. import comfy_bridge as bridge
from ..loaders.gemma import load_gemma_text_encoder
from ..loaders.umt5 import load_umt5_encoder
from ..samplers.conditioning import make_conditioning
from ..text.sana_prompt import encode_sana_prompt
from ..text.wan_prompt import WAN_DEFAULT_NEGATIVE, encode_wan_prompt
from .options import loader_inputs, resolve_load
from .progress import unit_progress

FOLDERS = ("text_encoders",)


def prompt_batch(prompt, negative_prompt, batch_prompts: bool) -> list[str]:
    """The prompts of one text node: each non-empty line with `batch_prompts`, else the whole text."""
    if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
        raise ValueError("prompt and negative_prompt must be text.")
    prompts = [line for line in prompt.splitlines() if line.strip()] if batch_prompts else [prompt]
    if not prompts:
        raise ValueError("batch_prompts is on but the prompt has no non-empty line.")
    return prompts


def encode_pair(text_encoder, encode, prompts: list[str], negative_prompt: str) -> tuple[list, list]:
    """(positive, negative) CONDITIONING on ComfyUI's intermediate device, from `encode(encoder, tokenizer, texts,
    negative=..., progress=...)` (a text/ recipe) with the loaded encoder; one progress bar for both."""
    encoder, tokenizer = text_encoder.load(), text_encoder.info["tokenizer"]
    out = bridge.intermediate_device()
    first, second = unit_progress(2)
    with torch.inference_mode():
        positive = encode(encoder, tokenizer, prompts, progress=first)
        negative = encode(encoder, tokenizer, [negative_prompt], negative=True, progress=second)
    return tuple(make_conditioning(embeds.to(out), mask.to(out)) for embeds, mask in (positive, negative))


class SanaTextEncoderLoader:
    DESCRIPTION = ("Loads Gemma-2-2B-IT for Sana: an HF folder, a Comfy-Org single file (tokenizer inside), or a "
                   "safetensors file with tokenizer.model beside it.")
    CATEGORY = "Sana"
    FUNCTION = "load"
    RETURN_TYPES = ("SANA_TEXT_ENCODER",)

    @classmethod
    def INPUT_TYPES(cls):
        return loader_inputs(FOLDERS, "models/text_encoders (or models/clip)")

    def load(self, model_name, dtype, weight_storage="default"):
        path, weight_dtype, storage = resolve_load(FOLDERS, model_name, dtype, weight_storage, "text_encoder",
                                                  [torch.bfloat16, torch.float16, torch.float32])
        encoder, tokenizer = load_gemma_text_encoder(path, weight_dtype, storage)
        return (bridge.ModelHandle(encoder, "text_encoder", family="sana", tokenizer=tokenizer),)


class SanaTextEncode:
    DESCRIPTION = ("Encodes the prompt with Sana's recipe (complex human instruction, 300-token window) and the "
                   "negative prompt without it, as Sana was trained.")
    CATEGORY = "Sana"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("SANA_TEXT_ENCODER",),
            "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
        }}

    def encode(self, text_encoder, prompt, negative_prompt):
        return encode_pair(text_encoder, encode_sana_prompt, prompt_batch(prompt, negative_prompt, False),
                           negative_prompt)


class WanTextEncoderLoader:
    DESCRIPTION = ("Loads UMT5-XXL for Wan2.1: Comfy-Org umt5_xxl files (fp16, fp8 scaled; tokenizer inside), the "
                   "original models_t5_umt5-xxl-enc-bf16.pth (tokenizer files beside it), an HF folder, or a GGUF "
                   "quantisation (city96's umt5-xxl-encoder; spiece.model beside it).")
    CATEGORY = "Wan"
    FUNCTION = "load"
    RETURN_TYPES = ("WAN_TEXT_ENCODER",)

    @classmethod
    def INPUT_TYPES(cls):
        return loader_inputs(FOLDERS, "models/text_encoders (or models/clip)")

    def load(self, model_name, dtype, weight_storage="default"):
        path, weight_dtype, storage = resolve_load(FOLDERS, model_name, dtype, weight_storage, "text_encoder",
                                                  [torch.bfloat16, torch.float32])
        encoder, tokenizer = load_umt5_encoder(path, weight_dtype, storage)
        return (bridge.ModelHandle(encoder, "text_encoder", family="wan", tokenizer=tokenizer),)


class WanTextEncode:
    DESCRIPTION = ("Encodes prompts with UMT5 as Wan does: 512 tokens, zero past each prompt's end. One prompt per "
                   "line with batch_prompts on gives a batch of videos.")
    CATEGORY = "Wan"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("WAN_TEXT_ENCODER",),
            "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            "negative_prompt": ("STRING", {"multiline": True, "default": WAN_DEFAULT_NEGATIVE,
                                           "tooltip": "Wan2.1's own default negative prompt."}),
            "batch_prompts": ("BOOLEAN", {"default": False,
                                          "tooltip": "Each non-empty line of the prompt is one video of the batch."}),
        }}

    def encode(self, text_encoder, prompt, negative_prompt, batch_prompts):
        prompts = prompt_batch(prompt, negative_prompt, batch_prompts)
        return encode_pair(text_encoder, lambda encoder, tokenizer, texts, negative=False, progress=None:
                           encode_wan_prompt(encoder, tokenizer, texts, progress=progress), prompts, negative_prompt)


NODE_CLASS_MAPPINGS = {"SanaTextEncoderLoader": SanaTextEncoderLoader, "SanaTextEncode": SanaTextEncode,
                       "WanTextEncoderLoader": WanTextEncoderLoader, "WanTextEncode": WanTextEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"SanaTextEncoderLoader": "Load Sana Text Encoder (Gemma-2)",
                              "SanaTextEncode": "Sana Text Encode",
                              "WanTextEncoderLoader": "Load Wan Text Encoder (UMT5-XXL)",
                              "WanTextEncode": "Wan Text Encode"}
