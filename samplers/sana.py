"""Sana text-to-image sampling: the guided velocity of SanaTransformer2DModel and the whole run."""

from __future__ import annotations

import contextlib

import torch

from ..loaders.cast_layers import execution_device
from ..controlnet.sana import ControlRun, control_run
from .conditioning import conditioning_tensors, expand_latent_to_prompts, pad_to_length, repeat_to_batch
from .guidance import Guidance, pipeline_cfg
from .loop import StepCallback, plan_run, sample_flow, start_latent
from .noise import comfy_noise
from .perturbed import PAG, check_family
from .speed import NO_SPEED, SpeedOptions, SpeedRun, speed_run

# DC-AE f32c32's scaling factor (every Sana release uses it): LATENT holds raw VAE latents (ComfyUI's
# convention), the transformer works on raw * scale.
SANA_LATENT_SCALE = 0.41407


def _check_width(embeds: torch.Tensor, width: int) -> None:
    if embeds.shape[-1] != width:
        raise ValueError(
            f"The conditioning has width {embeds.shape[-1]} but this Sana model expects {width} (Gemma-2); "
            "encode the prompt with the Sana text encoder."
        )


def _prompt_batch(conditioning, name: str, batch: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    embeds, mask = conditioning_tensors(conditioning, name)
    _check_width(embeds, width)
    return repeat_to_batch(embeds, batch, name), repeat_to_batch(mask, batch, name)


def _guided_batch(cond, cond_mask, uncond, uncond_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and masks in the reference pipeline's order: [uncond..., cond...], padded to one length."""
    length = max(cond.shape[1], uncond.shape[1])
    cond, cond_mask = pad_to_length(cond, cond_mask, length)
    uncond, uncond_mask = pad_to_length(uncond, uncond_mask, length)
    return torch.cat([uncond, cond]), torch.cat([uncond_mask, cond_mask])


def sana_velocity(transformer, positive, negative, cfg: float, batch: int, guidance: Guidance | None = None,
                  control: ControlRun | None = None, speed: SpeedRun = NO_SPEED):
    """`predict(x, t, step, total)`: the transformer's flow velocity under `guidance` (None: CFG with `cfg`).

    A guided step runs uncond and cond as one batch, as SanaPipeline does; an unguided step runs cond alone. PAG
    appends the perturbed cond to the same batch, as SanaPAGPipeline does. `control` (the run's ControlNets) adds
    its block samples to the same forward, as SanaControlNetPipeline does. `speed` gives each forward its cache
    context, named after the batch's rows.
    """
    guidance = (guidance if guidance is not None else pipeline_cfg(cfg)).for_run()
    check_family(guidance, "sana", len(transformer.transformer_blocks))
    pag = guidance if isinstance(guidance, PAG) else None
    device, dtype = execution_device(transformer), transformer.dtype
    width = transformer.config.caption_channels
    cond, cond_mask = _prompt_batch(positive, "positive", batch, width)
    pair = None  # the guided steps' [uncond, cond] embeddings and mask
    if guidance.uses_uncond:
        embeds, mask = _guided_batch(cond, cond_mask, *_prompt_batch(negative, "negative", batch, width))
        pair = (embeds.to(device, dtype), mask.to(device))
    cond_only = (cond.to(device, dtype), cond_mask.to(device))

    def predict(x: torch.Tensor, t: torch.Tensor, step: int, total: int) -> torch.Tensor:
        guided = pag.uses_uncond if pag is not None else guidance.needs_uncond(step, total)
        perturbed = pag is not None and pag.perturbs(step, total)
        embeds, mask = pair if guided else cond_only
        if perturbed:  # the cond rows once more, for the perturbed forward
            embeds, mask = torch.cat([embeds, embeds[-batch:]]), torch.cat([mask, mask[-batch:]])
        x_in = torch.cat([x] * (embeds.shape[0] // batch))
        timestep = t.expand(x_in.shape[0]) * transformer.config.timestep_scale
        blocks = control.block_samples(x_in, embeds, mask, timestep, step, guided) if control is not None else None
        if blocks is not None:
            blocks = tuple(b.to(device, dtype) for b in blocks)
        rows = "cond_uncond" if guided else "cond"
        with pag.perturbed(transformer) if perturbed else contextlib.nullcontext(), \
                speed.context(rows + "_perturbed" if perturbed else rows):
            out = transformer(
                x_in.to(dtype), encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=timestep,
                controlnet_block_samples=blocks, return_dict=False,
            )[0].float()
        if pag is not None:
            return pag.combine(out, t, perturbed)
        uncond_out, cond_out = out.chunk(2) if guided else (None, out)
        return guidance.combine(cond_out, uncond_out, step, total)

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
    guidance: Guidance | None = None,
    sigmas: torch.Tensor | None = None,
    speed: SpeedOptions | None = None,
) -> torch.Tensor:
    """Sample one LATENT batch; returns raw DC-AE latents on the transformer's device (float32).

    `guidance` (a method from samplers.guidance) replaces the plain CFG of `cfg`; `sigmas` (as given, ComfyUI's
    SIGMAS) replace steps, shift and denoise; `speed` (samplers.speed) applies for this run only.
    """
    if getattr(transformer.config, "guidance_embeds", False):
        raise ValueError("This is a Sana-Sprint model: it samples with the sCM solver and its guidance embedding, "
                         "not with flow solvers.")
    samples = expand_latent_to_prompts(latent["samples"], positive)
    check_sana_latent(samples, transformer.config.in_channels)
    device = execution_device(transformer)
    noise = comfy_noise(tuple(samples.shape), seed, latent.get("batch_index")).to(device)
    scheduler, schedule = plan_run(solver, shift, steps, denoise, device, sigmas=sigmas)
    x = start_latent(schedule, noise, samples.to(device, torch.float32) * SANA_LATENT_SCALE)
    control = control_run(transformer, positive, negative, samples.shape, schedule, shift)
    if control is not None and speed is not None and speed.cache != "none":
        raise ValueError("Step caching does not combine with a Sana ControlNet: the cached residual already holds "
                         "the ControlNet's additions. Set the cache to none in Sana Speed Options.")
    with speed_run(transformer, speed, "sana", len(schedule.timesteps)) as run:
        predict = sana_velocity(transformer, positive, negative, cfg, samples.shape[0], guidance, control, run)
        x = sample_flow(run.track(predict, schedule), scheduler, schedule, x, callback)
    return x / SANA_LATENT_SCALE


def sana_memory_estimate(transformer, latent_shape, guided: bool) -> int:
    """Bytes of activations one forward needs beyond the weights, for ComfyUI to free room before sampling.

    An estimate from the widest activation, the GLUMBConv hidden state (2 x mlp_ratio x width per token), plus the
    attention inputs, with a factor 2 for temporaries. A `guided` step runs uncond and cond as one batch.
    """
    config = transformer.config
    batch = latent_shape[0] * (2 if guided else 1)
    tokens = latent_shape[-1] * latent_shape[-2]
    width = config.num_attention_heads * config.attention_head_dim
    element = torch.finfo(transformer.dtype).bits // 8
    return int(batch * tokens * width * (2 * config.mlp_ratio + 4) * element * 2)
