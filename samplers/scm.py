"""Sana-Sprint sampling: sCM (continuous-time consistency) steps in TrigFlow time, as diffusers' SanaSprintPipeline.

Sprint is a flow model distilled into a consistency model (paper: SANA-Sprint, arXiv 2503.09641). Each step maps the
current sample straight to a clean estimate; with more than one step that estimate is re-noised with fresh noise to
the next TrigFlow time. There is no classifier-free guidance: the guidance scale goes through the model's guidance
embedder instead. The step itself is diffusers' `SCMScheduler`.
"""

from __future__ import annotations

import math

import torch
from diffusers import SCMScheduler

from ..loaders.cast_layers import execution_device
from .conditioning import conditioning_tensors, expand_latent_to_prompts, repeat_to_batch
from .loop import StepCallback
from .noise import comfy_noise
from .sana import SANA_LATENT_SCALE, check_sana_latent
from .schedulers import total_steps
from .speed import SpeedOptions, speed_run

MAX_STEPS = 4
# TrigFlow time runs over [0, pi/2]; diffusers' default start 1.57080 is pi/2 rounded up to 5 decimals.
MAX_TRIGFLOW_TIME = 1.57080


def validate_sprint_sampling(steps: int, guidance: float, max_timesteps: float, intermediate_timesteps: float,
                             denoise: float = 1.0) -> None:
    """The checks the Sprint sampler node runs before loading anything."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be a whole number from 1 to {MAX_STEPS} for Sana-Sprint, got {steps}.")
    for name, value in (("guidance", guidance), ("max_timestep", max_timesteps),
                        ("intermediate_timestep", intermediate_timesteps), ("denoise", denoise)):
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number, got {value}.")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}; 1.0 samples from pure noise.")
    if not 0.0 < max_timesteps <= MAX_TRIGFLOW_TIME:
        raise ValueError(f"max_timestep must be in (0, {MAX_TRIGFLOW_TIME}] (TrigFlow time), got {max_timesteps}.")
    if total_steps(steps, denoise) == 2 and not 0.0 < intermediate_timesteps < max_timesteps:
        raise ValueError(f"intermediate_timestep must lie between 0 and max_timestep ({max_timesteps}) for a 2-step "
                         f"schedule, got {intermediate_timesteps}.")


def check_sprint_model(transformer) -> None:
    if not getattr(transformer.config, "guidance_embeds", False):
        raise ValueError("sCM sampling needs a Sana-Sprint model (one with a guidance embedder); this is a plain Sana "
                         "model: use the Sana Sampler node for it.")


def step_noise_generator(seed: int, shape: tuple[int, ...]) -> torch.Generator:
    """The CPU generator that draws each step's fresh noise: seeded with `seed`, placed just after the initial noise.

    It is the one stream SanaSprintPipeline(generator=torch.Generator().manual_seed(seed)) uses: first the initial
    noise (equal to ComfyUI's noise for this seed), then each step's. A CPU stream keeps a seed's image the same on
    every device. With a LATENT `batch_index` the initial noise follows ComfyUI's per-index rule; the step noise
    still continues after a plain draw of the whole batch.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    torch.randn(shape, dtype=torch.float32, generator=generator)  # step past the initial noise the pipeline draws
    return generator


def sprint_timesteps(scheduler: SCMScheduler, steps: int, max_timesteps: float, intermediate_timesteps: float,
                     device) -> torch.Tensor:
    """TrigFlow times from max_timesteps down to 0: [max, intermediate, 0] for 2 steps, else evenly spaced."""
    intermediate = intermediate_timesteps if steps == 2 else None
    scheduler.set_timesteps(steps, device=device, max_timesteps=max_timesteps, intermediate_timesteps=intermediate)
    scheduler.set_begin_index(0)
    return scheduler.timesteps


def _prompt_batch(positive, batch: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    embeds, mask = conditioning_tensors(positive, "positive")
    if embeds.shape[-1] != width:
        raise ValueError(f"The conditioning has width {embeds.shape[-1]} but this Sana model expects {width} "
                         "(Gemma-2); encode the prompt with the Sana text encoder.")
    return repeat_to_batch(embeds, batch, "positive"), repeat_to_batch(mask, batch, "positive")


def sprint_prediction(transformer, positive, guidance: float, batch: int, sigma_data: float):
    """`predict(x, t)`: the TrigFlow output F (times sigma_data) at TrigFlow time t, as the pipeline computes it.

    Sprint's transformer is a flow model over flow time u = sin t / (sin t + cos t): its input is rescaled from the
    TrigFlow sample, and its velocity is turned back into the TrigFlow parameterisation.
    """
    embeds, mask = _prompt_batch(positive, batch, transformer.config.caption_channels)
    device, dtype = execution_device(transformer), transformer.dtype
    # As the pipeline: the scale in the prompt embeddings' dtype, times guidance_embeds_scale (0.1).
    scale = torch.full([batch], guidance, dtype=torch.float32).to(embeds.dtype)
    scale = scale * transformer.config.guidance_embeds_scale
    scale, embeds, mask = scale.to(device), embeds.to(device, dtype), mask.to(device)

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        timestep = t.expand(x.shape[0])
        flow_time = torch.sin(timestep) / (torch.cos(timestep) + torch.sin(timestep))
        u = flow_time.view(-1, 1, 1, 1)
        norm = torch.sqrt(u**2 + (1 - u) ** 2)
        x_in = x / sigma_data * norm
        velocity = transformer(x_in.to(dtype), encoder_hidden_states=embeds, encoder_attention_mask=mask,
                               guidance=scale, timestep=flow_time, return_dict=False)[0]
        trigflow = ((1 - 2 * u) * x_in + (1 - 2 * u + 2 * u**2) * velocity) / norm
        return trigflow.float() * sigma_data

    return predict


def sprint_start(noise: torch.Tensor, samples: torch.Tensor, t: torch.Tensor, denoise: float,
                 sigma_data: float) -> torch.Tensor:
    """The first sample, times sigma_data: pure noise at denoise 1, as SanaSprintPipeline; else the input latent
    noised to TrigFlow time t, cos(t) x + sin(t) noise, as SanaSprintImg2ImgPipeline."""
    noise = noise * sigma_data
    if denoise >= 1.0:
        return noise
    return torch.cos(t) * (samples * SANA_LATENT_SCALE * sigma_data) + torch.sin(t) * noise


def sample_sana_sprint(
    transformer,
    latent: dict,
    positive,
    seed: int,
    steps: int,
    guidance: float = 4.5,
    max_timesteps: float = MAX_TRIGFLOW_TIME,
    intermediate_timesteps: float = 1.3,
    callback: StepCallback | None = None,
    speed: SpeedOptions | None = None,
    denoise: float = 1.0,
) -> torch.Tensor:
    """Sample one LATENT batch with a Sana-Sprint model; raw DC-AE latents on the model's device, float32.

    At denoise 1 the input latent gives the shape only (text-to-image). Below 1 the run takes the last `steps` steps
    of a schedule of round(steps / denoise) steps (ComfyUI's meaning of denoise) from the input latent noised to the
    first of them (image-to-image). `intermediate_timesteps` is used for a 2-step schedule; other lengths space the
    TrigFlow times evenly. `callback(step, total, x0)` gets the clean estimate in the
    transformer's latent space, as samplers/loop.py's does. `speed` (samplers.speed): its attention backend and
    compile apply; step caching does not (one to four steps leave nothing to skip).
    """
    validate_sprint_sampling(steps, guidance, max_timesteps, intermediate_timesteps, denoise)
    check_sprint_model(transformer)
    if speed is not None and speed.cache != "none":
        raise ValueError("Sana-Sprint samples in 1 to 4 steps, too few for step caching to skip any; set the cache to "
                         "none in Sana Speed Options.")
    samples = expand_latent_to_prompts(latent["samples"], positive)
    check_sana_latent(samples, transformer.config.in_channels)
    shape, device = tuple(samples.shape), execution_device(transformer)
    scheduler = SCMScheduler()
    sigma_data = scheduler.config.sigma_data
    total = total_steps(steps, denoise)
    # As the img2img pipeline: the schedule from the first step run on, and the scheduler positioned there.
    timesteps = sprint_timesteps(scheduler, total, max_timesteps, intermediate_timesteps, device)[total - steps:]
    scheduler.set_begin_index(total - steps)
    generator = step_noise_generator(seed, shape)
    predict = sprint_prediction(transformer, positive, guidance, shape[0], sigma_data)
    noise = comfy_noise(shape, seed, latent.get("batch_index")).to(device)
    x = sprint_start(noise, samples.to(device, torch.float32), timesteps[0], denoise, sigma_data)
    with speed_run(transformer, speed, "sana", steps):
        for i, t in enumerate(timesteps[:-1]):
            x, denoised = scheduler.step(predict(x, t), t, x, generator=generator, return_dict=False)
            if callback is not None:
                callback(i + 1, steps, denoised / sigma_data)
    return denoised / sigma_data / SANA_LATENT_SCALE
