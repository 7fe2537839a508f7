"""Flow-matching solvers as diffusers schedulers, configured as the reference pipelines configure them.

Using diffusers' own scheduler classes (not a re-implementation) is what makes our trajectories equal the
reference pipelines' step for step.
"""

from __future__ import annotations

import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler


def _flow_euler(shift: float):
    return FlowMatchEulerDiscreteScheduler(shift=shift)


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
    "flow_unipc": _flow_unipc,
}

# How the noise levels are spread over the steps: "default" is the solver's own (diffusers') spacing; "simple" is
# ComfyUI's `simple` scheduler, so a run equals the native KSampler(euler, simple) with the same seed.
SCHEDULES = ("default", "simple")


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
