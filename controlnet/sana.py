"""Sana ControlNet conditioning: what Apply Sana ControlNet attaches to a CONDITIONING, and what a sampler runs.

As in diffusers' `SanaControlNetPipeline`, every model call runs the ControlNet (`SanaControlNetModel`) on the same
latent batch, prompt embeddings, mask and timestep as the transformer, plus the control image's DC-AE latent (times
the VAE's scaling factor); its per-block outputs, times the strength, are added by the transformer after its blocks
1..N (`controlnet_block_samples`).

The control travels inside the CONDITIONING dicts, as ComfyUI's ControlNetApplyAdvanced does, so a sampler needs no
extra input: positive and negative get the same control, so one ControlNet forward serves the uncond and cond rows
of a guided batch (the pipeline's batch). Several controls (chained Apply nodes) add their block outputs, the usual
multi-ControlNet rule (diffusers' MultiControlNetModel sums residuals too).

start / end percent have ComfyUI's meaning (ControlNetApplyAdvanced on a flow model): percent p is the noise level
sigma(p) = shift * (1 - p) / (1 + (shift - 1) * (1 - p)), ComfyUI's `ModelSamplingDiscreteFlow.percent_to_sigma`
with the run's shift (p <= 0 -> 1, p >= 1 -> 0), and a step is controlled when the noise level it starts from lies
in [sigma(end), sigma(start)] (both model calls of a Heun step alike). Sana's schedules are even in unshifted time,
so in a full run that is the first `start` to `end` fraction of the steps; with denoise < 1 or custom sigmas it stays
tied to the noise level, as in ComfyUI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import SanaControlNetModel

from ..loaders.cast_layers import execution_device

CONDITIONING_KEY = "sana_controlnet"


@dataclass(frozen=True, eq=False)  # compared by identity: the same control on positive and negative runs once
class SanaControl:
    controlnet: Any  # the model handle; its `.module` is the SanaControlNetModel (on its device once loaded)
    latent: torch.Tensor  # the control image's DC-AE latent times the VAE's scaling factor, [B, C, h, w]
    image_size: tuple[int, int]  # (width, height) of the control image, for messages
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0


def control_settings_problems(strength: float, start_percent: float, end_percent: float) -> list[str]:
    """Every problem with the settings, each naming its input."""
    problems = [f"{name} must be a finite number, got {value!r}."
                for name, value in (("strength", strength), ("start_percent", start_percent),
                                    ("end_percent", end_percent))
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)]
    if not problems and not 0.0 <= start_percent < end_percent <= 1.0:
        problems.append(f"start_percent and end_percent: the ControlNet range needs 0 <= start_percent < end_percent "
                        f"<= 1, got {start_percent} and {end_percent}.")
    return problems


def check_control_settings(strength: float, start_percent: float, end_percent: float) -> None:
    problems = control_settings_problems(strength, start_percent, end_percent)
    if problems:
        raise ValueError(" ".join(problems))


def check_controlnet_module(module) -> None:
    if not isinstance(module, SanaControlNetModel):
        raise ValueError(f"Expected a Sana ControlNet (Load Sana ControlNet), got a {type(module).__name__}.")


def attach_control(conditioning, control: SanaControl) -> list:
    """A copy of CONDITIONING with `control` after the controls already attached; the input is not changed."""
    return [[embeds, {**extras, CONDITIONING_KEY: (*extras.get(CONDITIONING_KEY, ()), control)}]
            for embeds, extras in conditioning]


def controls_of(conditioning) -> tuple[SanaControl, ...]:
    """The controls attached to a CONDITIONING (every entry's, each once)."""
    found: dict[int, SanaControl] = {}
    for _, extras in conditioning or ():
        for control in extras.get(CONDITIONING_KEY, ()):
            found.setdefault(id(control), control)
    return tuple(found.values())


def refuse_controls(conditioning, sampler: str) -> None:
    if controls_of(conditioning):
        raise ValueError(f"The conditioning carries a Sana ControlNet, which the {sampler} does not support; use the "
                         f"Sana Sampler, or remove Apply Sana ControlNet.")


def percent_to_sigma(percent: float, shift: float) -> float:
    """ComfyUI's ModelSamplingDiscreteFlow.percent_to_sigma: the noise level `percent` of the way into sampling."""
    if percent <= 0.0:
        return 1.0
    if percent >= 1.0:
        return 0.0
    time = 1.0 - percent
    return shift * time / (1 + (shift - 1) * time)


def control_memory_estimate(controls, latent_shape, guided: bool) -> int:
    """Bytes the ControlNets' block outputs hold while the transformer runs (their own forward peaks before it, and
    needs no more than the transformer's, whose estimate covers it)."""
    batch = latent_shape[0] * (2 if guided else 1)
    tokens = latent_shape[-1] * latent_shape[-2]
    total = 0
    for module in {id(c.controlnet): c.controlnet.module for c in controls}.values():
        config = module.config
        width = config.num_attention_heads * config.attention_head_dim
        total += config.num_layers * batch * tokens * width * torch.empty((), dtype=module.dtype).element_size()
    return total


def control_run(transformer, positive, negative, latent_shape, schedule, shift: float) -> ControlRun | None:
    """The controls of a run over `schedule` (a samplers.loop.Schedule), or None when the conditioning has none."""
    if not (controls_of(positive) or controls_of(negative)):
        return None
    step_sigmas = [float(schedule.sigmas[k * schedule.order]) for k in range(schedule.steps)]
    return ControlRun(transformer, positive, negative, latent_shape, step_sigmas, shift)


class ControlRun:
    """The controls of one sampling run: which steps each one controls, and the block samples of a model call."""

    def __init__(self, transformer, positive, negative, latent_shape, step_sigmas: list[float], shift: float):
        self.positive, self.negative = controls_of(positive), controls_of(negative)
        self.controls = tuple({id(c): c for c in (*self.negative, *self.positive)}.values())
        for control in self.controls:
            _check_fits(control, transformer, latent_shape)
        self.batch = latent_shape[0]
        self.active = {
            id(c): [percent_to_sigma(c.end_percent, shift) <= sigma <= percent_to_sigma(c.start_percent, shift)
                    for sigma in step_sigmas]
            for c in self.controls
        }

    def block_samples(self, x_in, embeds, mask, timestep, step: int, guided: bool) -> tuple[torch.Tensor, ...] | None:
        """The summed, strength-scaled ControlNet block outputs for this model call (None: no control this step).

        The batch holds `x_in.shape[0] / batch` groups of rows: the negative prompt's first when `guided`, then the
        positive prompt's (PAG's perturbed rows are positive rows too).
        """
        groups = x_in.shape[0] // self.batch
        owners = ([self.negative] if guided else []) + [self.positive] * (groups - int(guided))
        total: list[torch.Tensor] = []
        for control in self.controls:
            if not self.active[id(control)][step]:
                continue
            groups_with = [g for g, controls in enumerate(owners) if any(c is control for c in controls)]
            if groups_with:
                total = _add(total, self._run(control, x_in, embeds, mask, timestep, groups_with, groups))
        return tuple(total) or None

    def _run(self, control, x_in, embeds, mask, timestep, groups_with: list[int], groups: int):
        controlnet = control.controlnet.module
        device, dtype = execution_device(controlnet), controlnet.dtype
        latent = control.latent.to(device)
        if latent.shape[0] != self.batch:
            latent = latent.expand(self.batch, *latent.shape[1:])
        rows = torch.cat([torch.arange(g * self.batch, (g + 1) * self.batch) for g in groups_with])
        everything = len(groups_with) == groups
        pick = (lambda t: t) if everything else (lambda t: t[rows.to(t.device)])
        samples = controlnet(
            pick(x_in).to(device, dtype), encoder_hidden_states=pick(embeds).to(device, dtype),
            encoder_attention_mask=pick(mask).to(device), timestep=pick(timestep).to(device),
            controlnet_cond=torch.cat([latent] * len(groups_with)), conditioning_scale=control.strength,
            return_dict=False,
        )[0]
        if everything:
            return samples
        # Rows without this control get nothing added: zeros, so one transformer forward still serves them all.
        full = []
        for sample in samples:
            padded = sample.new_zeros((x_in.shape[0], *sample.shape[1:]))
            padded[rows.to(sample.device)] = sample
            full.append(padded)
        return full


def _add(total: list[torch.Tensor], samples) -> list[torch.Tensor]:
    """Block-wise sum; a ControlNet with more blocks than another adds to the deeper blocks alone."""
    short, long = sorted((list(total), list(samples)), key=len)
    return [a + b for a, b in zip(short, long)] + long[len(short):]


def _check_fits(control: SanaControl, transformer, latent_shape) -> None:
    config, t_config = control.controlnet.module.config, transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    t_width = t_config.num_attention_heads * t_config.attention_head_dim
    if (width, config.caption_channels, config.in_channels) != (t_width, t_config.caption_channels,
                                                                 t_config.in_channels):
        raise ValueError(
            f"This Sana ControlNet does not fit the transformer: it is {width} wide with {config.caption_channels}-wide "
            f"captions, the transformer {t_width} and {t_config.caption_channels}. A ControlNet drives the Sana model "
            f"it was trained for (1152 wide: Sana 600M, 2240: Sana 1600M)."
        )
    if config.num_layers >= t_config.num_layers:
        raise ValueError(f"This Sana ControlNet has {config.num_layers} blocks, as many as or more than the "
                         f"transformer's {t_config.num_layers}: it was made for a deeper Sana model.")
    batch, height, width_cells = latent_shape[0], latent_shape[-2], latent_shape[-1]
    c_batch, c_height, c_width = control.latent.shape[0], control.latent.shape[-2], control.latent.shape[-1]
    if (c_height, c_width) != (height, width_cells):
        image_w, image_h = control.image_size
        scale_w, scale_h = image_w // c_width, image_h // c_height
        raise ValueError(
            f"The control image is {image_w}x{image_h} but the latent is {width_cells * scale_w}x{height * scale_h}: "
            f"they must be the same size. Resize the control image (e.g. Upscale Image) or set the latent's size to "
            f"the image's."
        )
    if c_batch not in (1, batch):
        raise ValueError(f"The control image batch has {c_batch} images but the latent batch is {batch}: give one "
                         f"control image for all, or one per latent.")
