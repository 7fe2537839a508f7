"""Empty latents and Sana's resolution bins."""

from __future__ import annotations

import torch
from diffusers.image_processor import PixArtImageProcessor
from diffusers.pipelines.sana.pipeline_sana import (
    ASPECT_RATIO_512_BIN,
    ASPECT_RATIO_1024_BIN,
    ASPECT_RATIO_2048_BIN,
    ASPECT_RATIO_4096_BIN,
)

SANA_STRIDE = 32
SANA_LATENT_CHANNELS = 32
SANA_BINS = {"512": ASPECT_RATIO_512_BIN, "1024": ASPECT_RATIO_1024_BIN, "2K": ASPECT_RATIO_2048_BIN,
             "4K": ASPECT_RATIO_4096_BIN}


def snap_to_bin(width: int, height: int, bin_name: str) -> tuple[int, int]:
    """The size Sana was trained on whose aspect ratio is closest to width/height (diffusers' resolution binning)."""
    if bin_name not in SANA_BINS:
        raise ValueError(f"Unknown resolution bin '{bin_name}'; choose one of {list(SANA_BINS)}.")
    binned_height, binned_width = PixArtImageProcessor.classify_height_width_bin(height, width, SANA_BINS[bin_name])
    return binned_width, binned_height


def check_image_size(width: int, height: int, stride: int, limit: int = 16384) -> None:
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value > limit:
            raise ValueError(f"{name} must be a whole number of pixels up to {limit}, got {value!r}.")
        if value <= 0 or value % stride:
            low = max(stride, value // stride * stride)
            raise ValueError(f"{name} {value} is not a multiple of {stride}; use {low} or {low + stride}.")


def empty_sana_latent(width: int, height: int, batch_size: int) -> torch.Tensor:
    check_image_size(width, height, SANA_STRIDE)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    return torch.zeros(batch_size, SANA_LATENT_CHANNELS, height // SANA_STRIDE, width // SANA_STRIDE)


WAN_STRIDE = 16  # the VAE's 8 x the transformer's 2x2 patches
WAN_LATENT_CHANNELS = 16


def check_frame_count(frames: int) -> None:
    """Wan's VAE compresses time 4x after the first frame: a video has 4n+1 frames."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % 4:
        low = max(1, (int(frames) - 1) // 4 * 4 + 1) if isinstance(frames, int) else 81
        raise ValueError(f"length {frames} is not 4n+1 frames; use {low} or {low + 4}.")


def empty_wan_latent(width: int, height: int, frames: int, batch_size: int) -> torch.Tensor:
    check_image_size(width, height, WAN_STRIDE)
    check_frame_count(frames)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    return torch.zeros(batch_size, WAN_LATENT_CHANNELS, (frames - 1) // 4 + 1, height // 8, width // 8)
