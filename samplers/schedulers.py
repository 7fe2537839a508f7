"""Flow-matching solvers as diffusers schedulers, configured as the reference pipelines configure them.

Using diffusers' own scheduler classes (not a re-implementation) is what makes our trajectories equal the
reference pipelines' step for step.
"""

from __future__ import annotations

from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler


def _flow_euler(shift: float):
    return FlowMatchEulerDiscreteScheduler(shift=shift)


def _flow_dpmpp_2m(shift: float):
    # Sana's "flow DPM-Solver" as diffusers' conversion script sets it up (scripts/convert_sana_to_diffusers.py).
    return DPMSolverMultistepScheduler(flow_shift=shift, use_flow_sigmas=True, prediction_type="flow_prediction")


SOLVERS = {
    "flow_dpmpp_2m": _flow_dpmpp_2m,
    "flow_euler": _flow_euler,
}


def make_scheduler(solver: str, shift: float):
    if solver not in SOLVERS:
        raise ValueError(f"Unknown solver '{solver}'; choose one of {sorted(SOLVERS)}.")
    return SOLVERS[solver](shift)
