"""The sampling loop shared by every family: schedule, denoise strength, per-step callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from .schedulers import SCHEDULES, comfy_simple_sigmas


def validate_sampling(steps: int, cfg: float, denoise: float, shift: float) -> None:
    """The checks every sampler node runs before loading anything."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive whole number, got {steps}.")
    for name, value in (("cfg", cfg), ("shift", shift), ("denoise", denoise)):
        if not torch.isfinite(torch.tensor(float(value))):
            raise ValueError(f"{name} must be a finite number, got {value}.")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}; 1.0 samples from pure noise.")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}.")


@dataclass
class Schedule:
    timesteps: torch.Tensor  # the steps to run
    sigmas: torch.Tensor  # noise level before each step, and 0 (or the last sigma) after the last
    from_noise: bool  # a full run starts from pure noise, as the reference pipelines do


def prepare_schedule(scheduler, steps: int, denoise: float, device, spacing: str = "default") -> Schedule:
    """Run `steps` steps over the last part of a longer schedule when denoise < 1 (ComfyUI's meaning of denoise).

    `spacing` "simple" places the noise levels as ComfyUI's `simple` scheduler does (flow Euler only: the other
    diffusers solvers take no explicit sigmas).
    """
    total = steps if denoise >= 1.0 else max(steps, int(round(steps / denoise)))
    if spacing == "simple":
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError("The 'simple' schedule is available with flow_euler only; use 'default' for this solver.")
        scheduler.set_timesteps(sigmas=comfy_simple_sigmas(total).tolist(), device=device)
    elif spacing == "default":
        scheduler.set_timesteps(total, device=device)
    else:
        raise ValueError(f"Unknown schedule '{spacing}'; choose one of {SCHEDULES}.")
    start = total - steps
    scheduler.set_begin_index(start)
    return Schedule(scheduler.timesteps[start:], scheduler.sigmas[start:], from_noise=start == 0)


def start_latent(schedule: Schedule, noise: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Pure noise for a full run, else the flow interpolation sigma*noise + (1-sigma)*latents (denoise < 1).

    A full run ignores the input latent even where the schedule's first sigma is just below 1 (DPM-Solver's flow
    sigmas start at 0.9997): that is what the reference pipelines do.
    """
    if schedule.from_noise:
        return noise.clone()
    sigma = float(schedule.sigmas[0])
    return sigma * noise + (1.0 - sigma) * latents


StepCallback = Callable[[int, int, torch.Tensor], None]


def sample_flow(
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler,
    schedule: Schedule,
    x: torch.Tensor,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate the flow ODE with the scheduler; `predict(x, t)` returns the (guided) velocity in float32.

    `callback(step, total, x0)` runs after every step with the current estimate of the clean latent, for progress,
    previews and interrupts.
    """
    total = len(schedule.timesteps)
    for i, t in enumerate(schedule.timesteps):
        velocity = predict(x, t)
        x0 = x - schedule.sigmas[i].to(x.device, torch.float32) * velocity
        x = scheduler.step(velocity, t, x, return_dict=False)[0]
        if callback is not None:
            callback(i + 1, total, x0)
    return x
