"""Sana-Video text- and image-to-video sampling: the guided velocity of SanaVideoTransformer3DModel and the run.

Latents are Wan2.1 VAE latents (LATENT holds them raw, vae/wan.py); the transformer works on them normalised, as
diffusers' SanaVideoPipeline does. Image-to-video follows SanaImageToVideoPipeline: the start image's latent is the
first latent frame, held fixed through the run, and its tokens see timestep 0 while the others see the step's.
"""

from __future__ import annotations

import torch

from ..loaders.cast_layers import execution_device
from ..vae.wan import to_model_space, to_raw
from .conditioning import expand_latent_to_prompts
from .guidance import Guidance, pipeline_cfg
from .loop import StepCallback, plan_run, sample_flow, start_latent
from .noise import comfy_noise
from .perturbed import check_family
from .sana import _guided_batch, _prompt_batch

# LATENT key of an image-to-video latent: how many latent frames at its start are the encoded start image.
START_FRAMES = "start_latent_frames"


def _timesteps(t: torch.Tensor, x: torch.Tensor, start_frames: int, patch_size) -> torch.Tensor:
    """One timestep per video, or (image-to-video) one per token with 0 on the start frames' tokens, in the shape
    SanaImageToVideoPipeline builds it: [B, 1, T/pt, H/ph, W/pw]."""
    if not start_frames:
        return t.expand(x.shape[0])
    p_t, p_h, p_w = patch_size
    mask = torch.zeros(x.shape[0], 1, x.shape[2] // p_t, x.shape[3] // p_h, x.shape[4] // p_w, device=x.device)
    mask[:, :, :start_frames] = 1.0
    return t.expand(mask.shape) * (1 - mask)


def sana_video_velocity(transformer, positive, negative, cfg: float, batch: int, guidance: Guidance | None = None,
                        start_frames: int = 0):
    """`predict(x, t, step, total)`: the flow velocity under `guidance` (None: CFG with `cfg`).

    A guided step runs uncond and cond as one batch, as the pipelines do; an unguided step runs cond alone.
    """
    guidance = (guidance if guidance is not None else pipeline_cfg(cfg)).for_run()
    check_family(guidance, "sana-video", len(transformer.transformer_blocks))
    device, dtype = execution_device(transformer), transformer.dtype
    width = transformer.config.caption_channels
    cond, cond_mask = _prompt_batch(positive, "positive", batch, width)
    pair = None
    if guidance.uses_uncond:
        embeds, mask = _guided_batch(cond, cond_mask, *_prompt_batch(negative, "negative", batch, width))
        pair = (embeds.to(device, dtype), mask.to(device))
    cond_only = (cond.to(device, dtype), cond_mask.to(device))

    def predict(x: torch.Tensor, t: torch.Tensor, step: int, total: int) -> torch.Tensor:
        guided = guidance.needs_uncond(step, total)
        embeds, mask = pair if guided else cond_only
        x_in = torch.cat([x] * (embeds.shape[0] // batch))
        timestep = _timesteps(t, x_in, start_frames, transformer.config.patch_size)
        out = transformer(x_in.to(dtype), encoder_hidden_states=embeds, encoder_attention_mask=mask,
                          timestep=timestep, return_dict=False)[0].float()
        uncond_out, cond_out = out.chunk(2) if guided else (None, out)
        return guidance.combine(cond_out, uncond_out, step, total)

    return predict


def check_sana_video_latent(samples: torch.Tensor, channels: int, start_frames: int = 0) -> None:
    if samples.ndim != 5 or samples.shape[1] != channels:
        raise ValueError(
            f"The latent has shape {tuple(samples.shape)}; Sana-Video needs a Wan2.1 video latent [B, {channels}, "
            "(frames-1)/4+1, H/8, W/8]. Use Empty Wan Latent Video, or Sana-Video Image to Video."
        )
    if start_frames >= samples.shape[2]:
        raise ValueError(f"The latent has {samples.shape[2]} latent frames, all of them start frames: there is no "
                         "frame left to generate. Ask for more frames (length 5 or more).")


def sample_sana_video(
    transformer,
    latent: dict,
    positive,
    negative,
    seed: int,
    steps: int,
    cfg: float,
    shift: float,
    solver: str,
    schedule: str = "default",
    denoise: float = 1.0,
    callback: StepCallback | None = None,
    guidance: Guidance | None = None,
    sigmas: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample one LATENT batch of videos; returns raw Wan2.1-VAE latents on the transformer's device (float32).

    A latent from Sana-Video Image to Video (`START_FRAMES` set) keeps its start frames and generates the rest.
    """
    samples = expand_latent_to_prompts(latent["samples"], positive)
    start_frames = int(latent.get(START_FRAMES, 0))
    check_sana_video_latent(samples, transformer.config.in_channels, start_frames)
    device = execution_device(transformer)
    noise = comfy_noise(tuple(samples.shape), seed, latent.get("batch_index")).to(device)
    scheduler, plan = plan_run(solver, shift, steps, denoise, device, schedule, sigmas)
    given = to_model_space(samples.to(device, torch.float32))
    x = start_latent(plan, noise, given)
    constrain = None
    if start_frames:
        def constrain(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([given[:, :, :start_frames], x[:, :, start_frames:]], dim=2)

        x = constrain(x)
    predict = sana_video_velocity(transformer, positive, negative, cfg, samples.shape[0], guidance, start_frames)
    return to_raw(sample_flow(predict, scheduler, plan, x, callback, constrain))


def sana_video_memory_estimate(transformer, latent_shape, guided: bool) -> int:
    """Bytes of activations one forward needs beyond the weights: the widest activation, the feed-forward's hidden
    state (2 x mlp_ratio x width per token), plus the attention inputs, x2 for temporaries; a guided step runs
    uncond and cond as one batch."""
    config = transformer.config
    p_t, p_h, p_w = config.patch_size
    tokens = latent_shape[2] // p_t * (latent_shape[3] // p_h) * (latent_shape[4] // p_w)
    batch = latent_shape[0] * (2 if guided else 1)
    width = config.num_attention_heads * config.attention_head_dim
    element = torch.finfo(transformer.dtype).bits // 8
    return int(batch * tokens * width * (2 * config.mlp_ratio + 4) * element * 2)
