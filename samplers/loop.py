"""The sampling loop shared by every family: schedule, denoise strength, per-step callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .schedulers import check_sigmas, custom_sigmas_scheduler, first_call, make_scheduler, set_spacing, total_steps


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
    timesteps: torch.Tensor  # one per model call (a second-order solver calls the model twice per step)
    sigmas: torch.Tensor  # noise level of the model's input at each call, and 0 (or the last sigma) at the end
    from_noise: bool  # a full run starts from pure noise, as the reference pipelines do
    steps: int  # the steps of the run, what progress and guidance count
    order: int  # model calls per step (the last step of a second-order solver is a single call)


def _schedule_from(scheduler, start: int, steps: int, from_noise: bool) -> Schedule:
    """The scheduler's schedule from step `start` on, with the scheduler positioned there."""
    index = first_call(scheduler, start)
    scheduler.set_begin_index(index)
    return Schedule(scheduler.timesteps[index:], scheduler.sigmas[index:], from_noise, steps, scheduler.order)


def prepare_schedule(scheduler, steps: int, denoise: float, device, spacing: str = "default") -> Schedule:
    """Run `steps` steps over the last part of a longer schedule when denoise < 1 (ComfyUI's meaning of denoise).

    `spacing` "simple" places the noise levels as ComfyUI's `simple` scheduler does (flow Euler, Heun and UniPC:
    DPM-Solver takes no explicit sigmas).
    """
    total = total_steps(steps, denoise)
    set_spacing(scheduler, total, spacing, device)
    start = total - steps
    return _schedule_from(scheduler, start, steps, from_noise=start == 0)


def prepare_custom_schedule(solver: str, sigmas: torch.Tensor, device):
    """(scheduler, Schedule) visiting `sigmas` as given (ComfyUI's SIGMAS; a final 0 is appended when missing).

    The scheduler is made here because it must not shift them again. As in ComfyUI's SamplerCustom, a first sigma
    below 1 noises the input latent to that level (img2img); 1 starts from pure noise.
    """
    sigmas = check_sigmas(sigmas)
    scheduler = custom_sigmas_scheduler(solver, sigmas, device)
    return scheduler, _schedule_from(scheduler, 0, len(sigmas) - 1, from_noise=float(sigmas[0]) >= 1.0)


def start_latent(schedule: Schedule, noise: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Pure noise for a full run, else the flow interpolation sigma*noise + (1-sigma)*latents (denoise < 1).

    A full run ignores the input latent even where the schedule's first sigma is just below 1 (DPM-Solver's flow
    sigmas start at 0.9997): that is what the reference pipelines do.
    """
    if schedule.from_noise:
        return noise.clone()
    sigma = float(schedule.sigmas[0])
    return sigma * noise + (1.0 - sigma) * latents


def plan_run(solver: str, shift: float, steps: int, denoise: float, device, spacing: str = "default",
             sigmas: torch.Tensor | None = None):
    """(scheduler, Schedule) of one run: the solver's own schedule, or `sigmas` (ComfyUI's SIGMAS) as given."""
    if sigmas is not None:
        return prepare_custom_schedule(solver, sigmas, device)
    scheduler = make_scheduler(solver, shift)
    return scheduler, prepare_schedule(scheduler, steps, denoise, device, spacing)


StepCallback = Callable[[int, int, torch.Tensor], None]
# predict(x, t, step, total): the guidance methods need to know where in the run a step is.
Predictor = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]


def sample_flow(
    predict: Predictor,
    scheduler,
    schedule: Schedule,
    x: torch.Tensor,
    callback: StepCallback | None = None,
    constrain: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Integrate the flow ODE with the scheduler; `predict(x, t, step, total)` returns the (guided) velocity in
    float32 for step `step` (from 0) of the `total` steps run (a second-order solver calls it twice per step).

    `callback(step, total, x0)` runs after every step with the current estimate of the clean latent, for progress,
    previews and interrupts. `constrain(x)` runs after every solver call and gives back what the run holds fixed
    (image-to-video's start frame).
    """
    calls = len(schedule.timesteps)
    for i, t in enumerate(schedule.timesteps):
        step = i // schedule.order
        velocity = predict(x, t, step, schedule.steps)
        x0 = x - schedule.sigmas[i].to(x.device, torch.float32) * velocity
        x = scheduler.step(velocity, t, x, return_dict=False)[0]
        if constrain is not None:
            x = constrain(x)
        if callback is not None and ((i + 1) % schedule.order == 0 or i == calls - 1):
            callback(step + 1, schedule.steps, x0)
    return x
