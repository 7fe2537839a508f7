"""Flow-matching solvers as diffusers schedulers, configured as the reference pipelines configure them.

Using diffusers' own scheduler classes (not a re-implementation) is what makes our trajectories equal the
reference pipelines' step for step. This module also decides which noise levels (sigmas) a run visits: the solver's
own spacing, ComfyUI's `simple` spacing, or a user's list taken as given, and it is the one place that places them
in a scheduler, so the schedule a node previews is the schedule a sampler runs.
"""

from __future__ import annotations

import torch
from diffusers import (
    DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)


def _flow_euler(shift: float):
    return FlowMatchEulerDiscreteScheduler(shift=shift)


def _flow_heun(shift: float):
    # Second order: two model calls per step (the last step, to sigma 0, is a single Euler call).
    return FlowMatchHeunDiscreteScheduler(shift=shift)


def _flow_dpmpp_2m(shift: float):
    # Sana's "flow DPM-Solver" as diffusers' conversion script sets it up (scripts/convert_sana_to_diffusers.py).
    return DPMSolverMultistepScheduler(flow_shift=shift, use_flow_sigmas=True, prediction_type="flow_prediction")


def _flow_unipc(shift: float):
    # Wan's default solver (UniPC, bh2) as the Wan2.1 diffusers repos configure it.
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                   solver_type="bh2")


SOLVERS = {
    "flow_dpmpp_2m": _flow_dpmpp_2m,
    "flow_euler": _flow_euler,
    "flow_heun": _flow_heun,
    "flow_unipc": _flow_unipc,
}

# How the noise levels are spread over the steps: "default" is the solver's own (diffusers') spacing; "simple" is
# ComfyUI's `simple` scheduler, so a run equals the native KSampler(euler, simple) with the same seed.
SCHEDULES = ("default", "simple")

# A shift of 1 is the identity, so a scheduler made with it runs given sigmas unchanged.
AS_GIVEN_SHIFT = 1.0


def make_scheduler(solver: str, shift: float):
    if solver not in SOLVERS:
        raise ValueError(f"Unknown solver '{solver}'; choose one of {sorted(SOLVERS)}.")
    return SOLVERS[solver](shift)


def comfy_simple_sigmas(steps: int, total: int = 1000) -> torch.Tensor:
    """Unshifted sigmas of ComfyUI's `simple` scheduler over a flow model's 1000 training sigmas (t/1000, t>=1).

    The solver applies the shift itself, as ComfyUI's ModelSamplingDiscreteFlow does for its table.
    """
    stride = total / steps
    return torch.tensor([(total - int(i * stride)) / total for i in range(steps)], dtype=torch.float64)


def total_steps(steps: int, denoise: float) -> int:
    """Length of the full schedule whose last `steps` steps a run with `denoise` < 1 takes (ComfyUI's denoise)."""
    return steps if denoise >= 1.0 else max(steps, int(round(steps / denoise)))


# ------------------------------------------------------------------------------------ placing sigmas in a scheduler


def _load_euler(scheduler, sigmas: torch.Tensor, device) -> None:
    scheduler.set_timesteps(sigmas=sigmas.tolist(), device=device)


def _load_unipc(scheduler, sigmas: torch.Tensor, device) -> None:
    # UniPC shifts the array arithmetically (a list would fail) and nudges a first sigma of 1 to 1 - 1e-6, as its
    # default schedule does, to keep log(alpha) finite.
    scheduler.set_timesteps(sigmas=sigmas.double().numpy().copy(), device=device)


def _load_heun(scheduler, sigmas: torch.Tensor, device) -> None:
    """diffusers' Heun takes no `sigmas=`: reset its state with its own set_timesteps, then lay the given sigmas out
    as that set_timesteps does (each inner level twice: the Euler call and the correction call land on it)."""
    scheduler.set_timesteps(len(sigmas), device=device)
    shift = scheduler.config.shift
    levels = (shift * sigmas.double() / (1 + (shift - 1) * sigmas.double())).to(torch.float32).to(device)
    timesteps = levels * scheduler.config.num_train_timesteps
    scheduler.timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
    levels = torch.cat([levels, torch.zeros(1, device=device)])
    scheduler.sigmas = torch.cat([levels[:1], levels[1:-1].repeat_interleave(2), levels[-1:]])


_SIGMA_LOADERS = {
    FlowMatchEulerDiscreteScheduler: _load_euler,
    FlowMatchHeunDiscreteScheduler: _load_heun,
    UniPCMultistepScheduler: _load_unipc,
}
# The solvers whose schedulers have a loader above: they take the `simple` spacing and custom sigmas.
SIGMA_SOLVERS = ("flow_euler", "flow_heun", "flow_unipc")


def load_sigmas(scheduler, sigmas: torch.Tensor, device) -> None:
    """Set the scheduler to visit `sigmas` (one per step, no final 0: the scheduler appends it).

    Like diffusers' own `set_timesteps(sigmas=...)`, the scheduler applies its shift to them: unshifted levels go to
    a scheduler made with the model's shift, already shifted ones to a scheduler made with AS_GIVEN_SHIFT.
    """
    loader = _SIGMA_LOADERS.get(type(scheduler))
    if loader is None:
        raise ValueError("This solver runs only its own ('default') spacing; the 'simple' schedule and custom sigmas "
                         f"work with {', '.join(SIGMA_SOLVERS)}.")
    loader(scheduler, sigmas, device)


def set_spacing(scheduler, total: int, spacing: str, device) -> None:
    """Set a `total`-step schedule with the chosen spacing ("default" or "simple")."""
    if spacing == "default":
        scheduler.set_timesteps(total, device=device)
    elif spacing == "simple":
        load_sigmas(scheduler, comfy_simple_sigmas(total), device)
    else:
        raise ValueError(f"Unknown schedule '{spacing}'; choose one of {SCHEDULES}.")


def first_call(scheduler, start: int) -> int:
    """Index into the scheduler's timesteps of user step `start`: a second-order solver makes two calls per step
    (diffusers' img2img pipelines slice at `t_start * scheduler.order` for the same reason)."""
    return start * scheduler.order


def step_sigmas(scheduler, start: int = 0) -> torch.Tensor:
    """The noise level before each step from `start` on, then the final one: one value per step, also for Heun,
    whose schedule repeats every inner level for its correction call."""
    sigmas = scheduler.sigmas
    return torch.cat([sigmas[first_call(scheduler, start):-1:scheduler.order], sigmas[-1:]]).cpu()


# ---------------------------------------------------------------------------------------- user-facing schedules


def schedule_sigmas(solver: str, shift: float, steps: int, spacing: str = "default", denoise: float = 1.0):
    """The `steps` + 1 noise levels a run with these settings visits (what the sampling loop sets up), for previews
    and for ComfyUI's SIGMAS."""
    scheduler = make_scheduler(solver, shift)
    total = total_steps(steps, denoise)
    set_spacing(scheduler, total, spacing, "cpu")
    return step_sigmas(scheduler, total - steps)


def check_sigmas(values) -> torch.Tensor:
    """Custom noise levels as a float32 tensor ending in 0 (appended when missing), or a ValueError that says what
    is wrong.

    They are taken as given (already shifted), like ComfyUI's SIGMAS: no solver re-applies a shift to them.
    """
    sigmas = torch.as_tensor(values, dtype=torch.float32).flatten().cpu()
    if len(sigmas) < 2:
        raise ValueError(f"Give at least two sigmas (the starting noise level and the last), got {len(sigmas)}.")
    if not torch.isfinite(sigmas).all():
        raise ValueError(f"Sigmas must be finite numbers (no NaN or inf), got {sigmas.tolist()}.")
    if sigmas.min() < 0 or sigmas.max() > 1:
        raise ValueError(f"Flow sigmas lie within [0, 1] (1 = pure noise, 0 = clean), got {sigmas.tolist()}.")
    rises = [(float(a), float(b)) for a, b in zip(sigmas[:-1], sigmas[1:]) if b >= a]
    if rises:
        raise ValueError(f"Sigmas must go strictly down, step by step; {rises[0][0]:g} is followed by "
                         f"{rises[0][1]:g}.")
    if sigmas[-1] > 0:
        sigmas = torch.cat([sigmas, torch.zeros(1)])
    return sigmas


def parse_sigmas(text: str) -> torch.Tensor:
    """Sigmas from a node's text input ("1.0, 0.9, 0.5, 0"; commas, spaces or new lines between values)."""
    values = []
    for part in text.replace(",", " ").split():
        try:
            values.append(float(part))
        except ValueError:
            raise ValueError(f"'{part}' is not a number; write sigmas like 1.0, 0.75, 0.5, 0.25, 0") from None
    return check_sigmas(values)


def custom_sigmas_scheduler(solver: str, sigmas: torch.Tensor, device):
    """A scheduler that visits `sigmas` (checked by `check_sigmas`) exactly as given.

    diffusers' Euler and UniPC re-apply their shift to sigmas given to set_timesteps; made with AS_GIVEN_SHIFT they
    keep them. Only UniPC changes a first sigma of 1 (to 1 - 1e-6), as it does for its own schedule.
    """
    if solver not in SIGMA_SOLVERS:
        raise ValueError(f"Custom sigmas work with {', '.join(SIGMA_SOLVERS)}, not with '{solver}'.")
    scheduler = make_scheduler(solver, AS_GIVEN_SHIFT)
    load_sigmas(scheduler, sigmas[:-1], device)
    return scheduler
