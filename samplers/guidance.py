"""Guidance methods: how one step's cond and uncond predictions become the velocity the solver integrates.

One class per method, each a setting the user builds in a node (the GUIDANCE type). The arithmetic is diffusers'
own (`diffusers.guiders`), called where it is a plain function, so a run equals a diffusers guider driving the same
loop. Like diffusers' guiders, the methods combine the model's raw output, which for Sana and Wan is the flow
velocity (ComfyUI's APG and CFG-Zero* nodes work on the denoised x0 instead, so their results differ).

A guidance object is never changed by sampling: a sampler takes `for_run()`, a copy that holds one run's state (APG's
momentum), so the same node output can drive any number of runs.
"""

from __future__ import annotations

import copy
import math

import torch
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance
from diffusers.guiders.classifier_free_zero_star_guidance import cfg_zero_star_scale
from diffusers.guiders.guider_utils import rescale_noise_cfg


def _finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"The guidance {name} must be a finite number, got {value!r}.")
    return float(value)


class Guidance:
    """What every method shares: a scale, and the part of the run in which guidance is on. A method defines
    `guide(cond, uncond)`, its velocity on guided steps.

    Args:
        scale: the guidance scale. At 1.0 guidance is the cond prediction alone, and the uncond forward is skipped.
        start, end: fractions of the run's steps. Guidance is on for steps `int(start * total) <= step <
            int(end * total)`, counted as diffusers' guiders count them (so with 5 steps, start 0.5 guides from step
            2 on); on other steps the cond prediction is the velocity and the uncond forward is skipped.
    """

    def __init__(self, scale: float, start: float = 0.0, end: float = 1.0):
        self.scale = _finite("scale", scale)
        self.start, self.end = _finite("start", start), _finite("end", end)
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(f"The guidance range needs 0 <= start < end <= 1, got start {start} and end {end}.")

    @property
    def uses_uncond(self) -> bool:
        """False when no step needs the uncond prediction: the negative prompt is then not read at all."""
        return not math.isclose(self.scale, 1.0)

    def active(self, step: int, total: int) -> bool:
        return self.uses_uncond and int(self.start * total) <= step < int(self.end * total)

    def needs_uncond(self, step: int, total: int) -> bool:
        """Whether step `step` of `total` needs the uncond forward (half of a guided step's compute)."""
        return self.active(step, total)

    def for_run(self) -> Guidance:
        """The object one run uses and may change, so the node's output stays as the user built it."""
        return copy.copy(self)

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor | None, step: int, total: int) -> torch.Tensor:
        """The velocity of step `step` of `total`; `uncond` is None where `needs_uncond` said False."""
        return self.guide(cond, uncond) if self.active(step, total) else cond


class CFG(Guidance):
    """Classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598), with optional rescale.

    Args:
        scale: the velocity is `uncond + scale * (cond - uncond)` (the Imagen form diffusers and the Sana / Wan
            pipelines use). 1.0 is the cond prediction alone.
        rescale: phi of Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", section 3.4
            (https://arxiv.org/abs/2305.08891): the guided velocity is rescaled to the standard deviation of the cond
            velocity and mixed in with weight phi, against the over-exposure of high scales. 0 is off, the paper
            uses 0.7.
        start, end: the fractions of the run that are guided (see `Guidance`).
    """

    def __init__(self, scale: float, rescale: float = 0.0, start: float = 0.0, end: float = 1.0):
        super().__init__(scale, start, end)
        self.rescale = _finite("rescale", rescale)

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor | None, step: int, total: int) -> torch.Tensor:
        velocity = super().combine(cond, uncond, step, total)
        # On every step, as diffusers does: on unguided ones it changes cond by float rounding only.
        return rescale_noise_cfg(velocity, cond, self.rescale) if self.rescale > 0.0 else velocity

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        return uncond + self.scale * (cond - uncond)


def pipeline_cfg(cfg: float) -> CFG:
    """The guidance of a sampler's bare `cfg`: SanaPipeline and WanPipeline guide only for cfg > 1, so a smaller one
    samples from the cond prediction alone."""
    return CFG(cfg if cfg > 1.0 else 1.0)


class CFGZeroStar(Guidance):
    """CFG-Zero* (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching Models",
    https://arxiv.org/abs/2503.18886).

    Args:
        scale: as CFG's, after the uncond velocity is multiplied by the optimised scale
            s* = <cond, uncond> / |uncond|^2 of each sample, which corrects the uncond velocity's error where the
            flow is still poorly estimated.
        zero_init_steps: the first steps give a zero velocity (the latent stays where it is), because early
            velocities are mostly wrong; the paper zeroes about the first 4% of the steps. Counted from the run's
            first step whatever `start` is, as diffusers counts them.
        start, end: the fractions of the run that are guided (see `Guidance`).
    """

    def __init__(self, scale: float, zero_init_steps: int = 1, start: float = 0.0, end: float = 1.0):
        super().__init__(scale, start, end)
        if isinstance(zero_init_steps, bool) or not isinstance(zero_init_steps, int) or zero_init_steps < 0:
            raise ValueError(f"zero_init_steps must be a whole number >= 0, got {zero_init_steps!r}.")
        self.zero_init_steps = zero_init_steps

    def needs_uncond(self, step: int, total: int) -> bool:
        return step >= self.zero_init_steps and self.active(step, total)

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor | None, step: int, total: int) -> torch.Tensor:
        if step < self.zero_init_steps:
            return torch.zeros_like(cond)
        return super().combine(cond, uncond, step, total)

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        alpha = cfg_zero_star_scale(cond.flatten(1), uncond.flatten(1)).view(-1, *(1,) * (cond.ndim - 1))
        uncond = uncond * alpha
        return uncond + self.scale * (cond - uncond)


class APG(Guidance):
    """Adaptive projected guidance (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance
    Scales in Diffusion Models", https://arxiv.org/abs/2410.02416).

    The guidance direction cond - uncond is averaged over the steps with momentum, clipped to a maximum norm, and
    split into the parts parallel and orthogonal to the cond prediction; the parallel part, which the paper finds
    causes the over-saturation of high scales, is weighted by `eta`. Norms and projections are over each sample's
    whole latent (all frames of a video). The defaults are diffusers'.

    Args:
        scale: as CFG's, applied to the projected direction; APG is meant to allow higher scales than CFG.
        eta: weight of the parallel part: 1 keeps it, 0 drops it (the paper's choice).
        norm_threshold: the L2 norm the direction is clipped to (per sample); 0 is no clipping.
        momentum: beta of the running average `direction + beta * previous average`; 0 is off. The paper uses a
            negative beta, which pushes away from the directions of earlier steps. The average starts afresh every
            run and moves on guided steps only.
        start, end: the fractions of the run that are guided (see `Guidance`).
    """

    def __init__(self, scale: float, eta: float = 1.0, norm_threshold: float = 15.0, momentum: float = 0.0,
                 start: float = 0.0, end: float = 1.0):
        super().__init__(scale, start, end)
        self.eta = _finite("eta", eta)
        self.norm_threshold = _finite("norm_threshold", norm_threshold)
        self.momentum = _finite("momentum", momentum)

    def for_run(self) -> APG:
        """A copy with a fresh momentum average (diffusers starts one at step 0 of every run)."""
        run = copy.copy(self)
        run.momentum_buffer = MomentumBuffer(self.momentum) if self.momentum != 0.0 else None
        return run

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        return normalized_guidance(cond, uncond, self.scale, self.momentum_buffer, self.eta, self.norm_threshold)
