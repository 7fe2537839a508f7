"""ComfyUI CONDITIONING <-> (embeddings, attention mask) batches for the transformers."""

from __future__ import annotations

import torch


def conditioning_tensors(conditioning, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The embeddings [B,L,D] and attention mask [B,L] of a single-entry CONDITIONING."""
    if not isinstance(conditioning, list) or not conditioning:
        raise ValueError(f"The {name} conditioning is empty; connect a text encode node.")
    if len(conditioning) > 1:
        raise ValueError(
            f"The {name} conditioning holds {len(conditioning)} entries (combined prompts); this sampler takes one. "
            "Encode a single prompt, or a batch of prompts in one text node."
        )
    embeds, extras = conditioning[0]
    mask = extras.get("attention_mask")
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.int64)
    return embeds, mask


def repeat_to_batch(tensor: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """Match the latent batch: one prompt serves every latent; B prompts need B latents (or a multiple)."""
    if tensor.shape[0] == batch:
        return tensor
    if batch % tensor.shape[0] != 0:
        raise ValueError(
            f"The {name} conditioning has {tensor.shape[0]} prompts but the latent batch is {batch}; "
            "use one prompt, or as many prompts as latents."
        )
    return tensor.repeat_interleave(batch // tensor.shape[0], dim=0)


def expand_latent_to_prompts(samples: torch.Tensor, positive) -> torch.Tensor:
    """One latent and N prompts make N samples: a batch of prompts gives a batch of images / videos."""
    prompts = conditioning_tensors(positive, "positive")[0].shape[0]
    if samples.shape[0] == 1 and prompts > 1:
        return samples.expand(prompts, *samples.shape[1:])
    return samples


def pad_to_length(embeds: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with masked-out zero tokens so prompts of different lengths share one batch."""
    extra = length - embeds.shape[1]
    if extra <= 0:
        return embeds, mask
    embeds = torch.nn.functional.pad(embeds, (0, 0, 0, extra))
    mask = torch.nn.functional.pad(mask, (0, extra))
    return embeds, mask


def make_conditioning(embeds: torch.Tensor, mask: torch.Tensor, **extras) -> list:
    return [[embeds, {"attention_mask": mask, **extras}]]
