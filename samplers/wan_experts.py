"""Wan2.2 A14B: a high-noise and a low-noise expert in one run, switched as diffusers' WanPipeline /
WanImageToVideoPipeline switch `transformer` and `transformer_2`.

The high-noise expert predicts while the timestep is at least `boundary_ratio` x 1000 (the schedulers'
num_train_timesteps), the low-noise expert after, with its own CFG scale (`guidance_scale_2`). The low-noise expert is
loaded only when the run reaches it, after the high-noise one left the device (`LowNoiseExpert.load`), so one
expert's weights are on the device at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .loop import Predictor
from .speed import SpeedOptions

NUM_TRAIN_TIMESTEPS = 1000  # every Wan scheduler's num_train_timesteps


@dataclass(frozen=True)
class LowNoiseExpert:
    """The second expert of a run: `load()` hands the device over to it and returns it, ready to run."""

    load: Callable[[], torch.nn.Module]
    boundary_ratio: float
    cfg: float
    speed: SpeedOptions | None = None


def check_boundary(boundary_ratio: float) -> None:
    if not 0.0 < boundary_ratio < 1.0:
        raise ValueError(f"The expert boundary is a fraction of the 1000 training timesteps, between 0 and 1 "
                         f"(Wan2.2 T2V: 0.875, I2V: 0.9); got {boundary_ratio}.")


def check_pair(high, low) -> None:
    """Both experts of a pair read and write the same latents and prompts."""
    fields = ("in_channels", "out_channels", "text_dim", "patch_size")
    different = [f for f in fields if tuple(_listed(high.config[f])) != tuple(_listed(low.config[f]))]
    if different:
        raise ValueError(f"The two experts differ in {', '.join(different)}: connect the high- and low-noise "
                         "experts of the same Wan2.2 model.")


def _listed(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def switch_call(timesteps: torch.Tensor, boundary_ratio: float) -> int:
    """The index of the first model call the low-noise expert makes (len(timesteps) when it makes none)."""
    boundary = boundary_ratio * NUM_TRAIN_TIMESTEPS
    return next((i for i, t in enumerate(timesteps) if t < boundary), len(timesteps))


def check_expert_speed(high: SpeedOptions | None, low: LowNoiseExpert) -> None:
    """MagCache's magnitude ratios are calibrated per model over a whole run; none are published for the Wan2.2
    experts (diffusers 0.42 has none), and the Wan2.1 14B ones would pass for them by shape."""
    if any(options is not None and options.cache == "mag" for options in (high, low.speed)):
        raise ValueError("MagCache has no calibrated ratios for the Wan2.2 A14B experts: choose first_block or sea "
                         "in Wan Speed Options for a two-expert run.")


def switching_predict(high: Predictor, make_low: Callable[[], Predictor], boundary_ratio: float) -> Predictor:
    """`predict` that calls `high` while t >= boundary_ratio x 1000, else the low-noise expert's predictor, which
    `make_low()` builds at its first call (loading that expert)."""
    boundary = boundary_ratio * NUM_TRAIN_TIMESTEPS
    low: list[Predictor] = []

    def predict(x: torch.Tensor, t: torch.Tensor, step: int, total: int) -> torch.Tensor:
        if t >= boundary:
            return high(x, t, step, total)
        if not low:
            low.append(make_low())
        return low[0](x, t, step, total)

    return predict
