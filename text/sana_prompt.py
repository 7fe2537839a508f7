"""Sana's prompt recipe on Gemma-2, token for token as diffusers' `SanaPipeline.encode_prompt` (clean_caption=False).

The positive prompt is prefixed with the "complex human instruction" (CHI) and only BOS plus the last
`max_sequence_length - 1` positions are kept (paper section 3.1); the negative prompt is encoded plainly.
"""

from __future__ import annotations

import torch

from ..loaders.cast_layers import execution_device
from ..work_units import Progress, counted_calls

# diffusers' default `complex_human_instruction` of `SanaPipeline.__call__` (diffusers 0.42,
# pipelines/sana/pipeline_sana.py), with its single quotes around 'Enhanced prompt'. Data, copied verbatim.
SANA_CHI = [
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:",
    "User Prompt: ",
]

SANA_DEFAULT_NEGATIVE = ""


def preprocess_prompt(text: str) -> str:
    """diffusers' `_text_preprocessing` without caption cleaning: Sana was trained on lower-cased captions."""
    return text.lower().strip()


def select_index(max_sequence_length: int) -> list[int]:
    """BOS plus the last `max_sequence_length - 1` positions: drops the CHI tokens, keeps the user's."""
    return [0] + list(range(-max_sequence_length + 1, 0))


def _tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = tokenizer(
        texts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
        padding_side="right", return_tensors="pt",
    )
    return tokens.input_ids, tokens.attention_mask


def _chi_length(tokenizer, chi: str, max_sequence_length: int) -> int:
    """Token budget with the CHI prefix: its tokens plus the user window, less BOS and the joining token (diffusers'
    "magic number 2")."""
    return len(tokenizer.encode(chi)) + max_sequence_length - 2


def encode_sana_prompt(text_encoder, tokenizer, prompts: list[str], negative: bool = False,
                       max_sequence_length: int = 300, device=None,
                       progress: Progress | None = None,
                       chi: list[str] = SANA_CHI) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [B, L, D] (the encoder's dtype, on `device`) and attention mask [B, L] of Sana prompts.

    `device` defaults to the text encoder's; the caller moves the results where the sampler needs them.
    Positive: CHI prefix and select_index, L = max_sequence_length. Negative: no CHI, L = max_sequence_length.
    `progress(done, total)` runs after each decoder layer (work_units); what it raises stops the encode there.
    `chi` is the instruction's lines (Sana-Video has its own, text/sana_video_prompt.py).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    device = execution_device(text_encoder) if device is None else torch.device(device)
    texts = [preprocess_prompt(p) for p in prompts]
    if negative:
        input_ids, mask = _tokenize(tokenizer, texts, max_sequence_length)
    else:
        chi = "\n".join(chi)
        input_ids, mask = _tokenize(tokenizer, [chi + t for t in texts], _chi_length(tokenizer, chi, max_sequence_length))
    mask = mask.to(device)
    layers = text_encoder.layers
    with torch.no_grad(), counted_calls(layers, len(layers), progress):
        embeds = text_encoder(input_ids.to(device), attention_mask=mask)[0].to(dtype=text_encoder.dtype)
    if not negative:
        keep = select_index(max_sequence_length)
        embeds, mask = embeds[:, keep], mask[:, keep]
    return embeds, mask
