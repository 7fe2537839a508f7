"""Wan's prompt recipe on umT5, value for value as diffusers' `WanPipeline._get_t5_prompt_embeds` / `encode_prompt`.

Each prompt is cleaned, tokenized to exactly `max_sequence_length` tokens (EOS appended, truncated, right-padded),
encoded, and every embedding past the prompt's own tokens is set to zero: Wan's cross-attention has no mask, so the
padding must be zeros, as the original release gets by trimming and zero-padding (wan/modules/t5.py, WanModel).
"""

from __future__ import annotations

import html

import regex
import torch

from ..loaders.cast_layers import execution_device
from ..work_units import Progress, counted_calls

# The original Wan2.1 release's default negative prompt, used when none is given: `sample_neg_prompt` in
# Wan-Video/Wan2.1 wan/configs/shared_config.py (commit 9737cba). ComfyUI's Wan templates use the same text;
# diffusers applies none. Data, copied verbatim.
WAN_DEFAULT_NEGATIVE = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走"
)

WAN_TEXT_LENGTH = 512  # `text_len` of the original release; the transformer is trained on 512 text tokens


def clean_prompt(text: str) -> str:
    """diffusers' `prompt_clean` without ftfy (an optional dependency there, not installed with this pack):
    HTML entities unescaped twice, whitespace runs collapsed to one space, ends stripped.

    `regex` (a dependency of transformers) rather than `re`: its `\\s` is Unicode White_Space, as diffusers uses.
    """
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip()


def _tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = tokenizer(
        texts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
        return_attention_mask=True, return_tensors="pt",
    )
    return tokens.input_ids, tokens.attention_mask


def encode_wan_prompt(text_encoder, tokenizer, prompts: list[str], max_sequence_length: int = WAN_TEXT_LENGTH,
                      device=None, progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [B, L, D] (the encoder's dtype, on `device`) and attention mask [B, L] int64 of Wan prompts.

    L = max_sequence_length. `device` defaults to the text encoder's. Embeddings past each prompt's length are
    exactly zero; the mask says which positions are the prompt's (CONDITIONING's `attention_mask`).
    `progress(done, total)` runs after each encoder block (work_units); what it raises stops the encode there.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    encoder_device = execution_device(text_encoder)
    device = encoder_device if device is None else torch.device(device)
    input_ids, mask = _tokenize(tokenizer, [clean_prompt(p) for p in prompts], max_sequence_length)
    blocks = text_encoder.encoder.block
    with torch.no_grad(), counted_calls(blocks, len(blocks), progress):
        hidden = text_encoder(input_ids.to(encoder_device), mask.to(encoder_device)).last_hidden_state
    embeds = hidden.to(dtype=text_encoder.dtype, device=device)
    lengths = mask.sum(dim=1).to(device)
    beyond = torch.arange(max_sequence_length, device=device)[None, :] >= lengths[:, None]
    return embeds.masked_fill(beyond[..., None], 0.0), mask.to(device=device, dtype=torch.int64)
