"""Sana text-to-image sampling: the guided velocity of SanaTransformer2DModel and the whole run."""

from __future__ import annotations

import torch

from .conditioning import conditioning_tensors, expand_latent_to_prompts, pad_to_length, repeat_to_batch
from .loop import StepCallback, prepare_schedule, sample_flow, start_latent
from .noise import comfy_noise
from .schedulers import make_scheduler

# DC-AE f32c32's scaling factor (every Sana release uses it): LATENT holds raw VAE latents (ComfyUI's
# convention), the transformer works on raw * scale.
SANA_LATENT_SCALE = 0.41407


def _check_width(embeds: torch.Tensor, width: int) -> None:
    if embeds.shape[-1] != width:
        raise ValueError(
            f"The conditioning has width {embeds.shape[-1]} but this Sana model expects {width} (Gemma-2); "
            "encode the prompt with the Sana text encoder."
        )


def _guided_batch(positive, negative, batch: int, use_cfg: bool, width: int):
    """Embeddings and masks in the reference pipeline's order: [uncond..., cond...]."""
    cond, cond_mask = conditioning_tensors(positive, "positive")
    _check_width(cond, width)
    cond, cond_mask = repeat_to_batch(cond, batch, "positive"), repeat_to_batch(cond_mask, batch, "positive")
    if not use_cfg:
        return cond, cond_mask
    uncond, uncond_mask = conditioning_tensors(negative, "negative")
    _check_width(uncond, width)
    uncond, uncond_mask = repeat_to_batch(uncond, batch, "negative"), repeat_to_batch(uncond_mask, batch, "negative")
    length = max(cond.shape[1], uncond.shape[1])
    cond, cond_mask = pad_to_length(cond, cond_mask, length)
    uncond, uncond_mask = pad_to_length(uncond, uncond_mask, length)
    return torch.cat([uncond, cond]), torch.cat([uncond_mask, cond_mask])


def sana_velocity(transformer, positive, negative, cfg: float, batch: int):
    """`predict(x, t)`: the transformer's flow velocity with classifier-free guidance, as SanaPipeline computes it."""
    use_cfg = cfg > 1.0
    device, dtype = transformer.device, transformer.dtype
    embeds, mask = _guided_batch(positive, negative, batch, use_cfg, transformer.config.caption_channels)
    embeds, mask = embeds.to(device, dtype), mask.to(device)

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x_in = torch.cat([x, x]) if use_cfg else x
        timestep = t.expand(x_in.shape[0]) * transformer.config.timestep_scale
        out = transformer(
            x_in.to(dtype), encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=timestep,
            return_dict=False,
        )[0].float()
        if not use_cfg:
            return out
        uncond, cond = out.chunk(2)
        return uncond + cfg * (cond - uncond)

    return predict


def check_sana_latent(samples: torch.Tensor, channels: int) -> None:
    if samples.ndim != 4 or samples.shape[1] != channels:
        raise ValueError(
            f"The latent has shape {tuple(samples.shape)}; a Sana model needs [B, {channels}, H/32, W/32]. "
            "Use the Empty Sana Latent node or encode with the DC-AE."
        )


def sample_sana(
    transformer,
    latent: dict,
    positive,
    negative,
    seed: int,
    steps: int,
    cfg: float,
    shift: float,
    solver: str,
    denoise: float = 1.0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Sample one LATENT batch; returns raw DC-AE latents on the transformer's device (float32)."""
    if getattr(transformer.config, "guidance_embeds", False):
        raise ValueError("This is a Sana-Sprint model: it samples with the sCM solver and its guidance embedding, "
                         "not with flow solvers.")
    samples = expand_latent_to_prompts(latent["samples"], positive)
    check_sana_latent(samples, transformer.config.in_channels)
    device = transformer.device
    noise = comfy_noise(tuple(samples.shape), seed, latent.get("batch_index")).to(device)
    scheduler = make_scheduler(solver, shift)
    schedule = prepare_schedule(scheduler, steps, denoise, device)
    x = start_latent(schedule, noise, samples.to(device, torch.float32) * SANA_LATENT_SCALE)
    predict = sana_velocity(transformer, positive, negative, cfg, samples.shape[0])
    x = sample_flow(predict, scheduler, schedule, x, callback)
    return x / SANA_LATENT_SCALE


def sana_memory_estimate(transformer, latent_shape, cfg: float) -> int:
    """Bytes of activations one forward needs beyond the weights, for ComfyUI to free room before sampling.

    An estimate from the widest activation, the GLUMBConv hidden state (2 x mlp_ratio x width per token), plus the
    attention inputs, with a factor 2 for temporaries.
    """
    config = transformer.config
    batch = latent_shape[0] * (2 if cfg > 1.0 else 1)
    tokens = latent_shape[-1] * latent_shape[-2]
    width = config.num_attention_heads * config.attention_head_dim
    element = torch.finfo(transformer.dtype).bits // 8
    return int(batch * tokens * width * (2 * config.mlp_ratio + 4) * element * 2)
