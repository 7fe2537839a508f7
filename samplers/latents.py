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


def size_problem(name: str, value, stride: int, limit: int = 16384) -> str | None:
    """What is wrong with one width or height (None when nothing is), naming the input."""
    if not isinstance(value, int) or isinstance(value, bool) or value > limit:
        return f"{name} must be a whole number of pixels up to {limit}, got {value!r}."
    if value <= 0 or value % stride:
        low = max(stride, value // stride * stride)
        return f"{name} {value} is not a multiple of {stride}; use {low} or {low + stride}."
    return None


def check_image_size(width: int, height: int, stride: int, limit: int = 16384) -> None:
    problems = [p for p in (size_problem("width", width, stride, limit), size_problem("height", height, stride, limit))
                if p]
    if problems:
        raise ValueError(" ".join(problems))


def empty_sana_latent(width: int, height: int, batch_size: int) -> torch.Tensor:
    check_image_size(width, height, SANA_STRIDE)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    return torch.zeros(batch_size, SANA_LATENT_CHANNELS, height // SANA_STRIDE, width // SANA_STRIDE)


WAN_STRIDE = 16  # the VAE's 8 x the transformer's 2x2 patches
WAN_LATENT_CHANNELS = 16


def frame_count_problem(frames) -> str | None:
    """Wan's VAE compresses time 4x after the first frame: a video has 4n+1 frames (None when `frames` is one)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % 4:
        low = max(1, (int(frames) - 1) // 4 * 4 + 1) if isinstance(frames, int) else 81
        return f"length {frames} is not 4n+1 frames; use {low} or {low + 4}."
    return None


def check_frame_count(frames: int) -> None:
    problem = frame_count_problem(frames)
    if problem:
        raise ValueError(problem)


def empty_wan_latent(width: int, height: int, frames: int, batch_size: int) -> torch.Tensor:
    check_image_size(width, height, WAN_STRIDE)
    check_frame_count(frames)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    return torch.zeros(batch_size, WAN_LATENT_CHANNELS, (frames - 1) // 4 + 1, height // 8, width // 8)


# ------------------------------------------------------------------------------------------------ memory

_FLOAT32 = 4
_GB = 2**30


def sana_image_bytes(width: int, height: int, batch_size: int) -> int:
    """Bytes a batch of Sana images of this size holds at least: its float32 latent and the float32 IMAGE the
    decoder returns (both where ComfyUI keeps outputs between nodes)."""
    latent = SANA_LATENT_CHANNELS * (height // SANA_STRIDE) * (width // SANA_STRIDE)
    return batch_size * (latent + height * width * 3) * _FLOAT32


def wan_video_bytes(width: int, height: int, frames: int, batch_size: int) -> int:
    """Bytes a batch of Wan videos of this size holds at least: its float32 latent and the float32 IMAGE frames the
    decoder returns."""
    latent = WAN_LATENT_CHANNELS * ((frames - 1) // 4 + 1) * (height // 8) * (width // 8)
    return batch_size * (latent + frames * height * width * 3) * _FLOAT32


def sana_memory_problem(width: int, height: int, batch_size: int, available: int) -> str | None:
    """Why a batch of this size cannot be held in `available` bytes, with the batch that can (None when it fits)."""
    needed = sana_image_bytes(width, height, batch_size)
    if needed <= available:
        return None
    fits = max((b for b in range(1, batch_size) if sana_image_bytes(width, height, b) <= available), default=0)
    advice = (f"at most batch_size {fits} fits at this size" if fits else
              "not even one image of this size fits; lower width and height")
    return (f"{width}x{height} with batch_size {batch_size} needs ~{needed / _GB:.1f} GB (latent and decoded images, "
            f"float32) but this machine holds {available / _GB:.1f} GB: {advice}.")


def wan_memory_problem(width: int, height: int, frames: int, batch_size: int, available: int) -> str | None:
    """Why videos of this size cannot be held in `available` bytes, with the length that can (None when they fit)."""
    needed = wan_video_bytes(width, height, frames, batch_size)
    if needed <= available:
        return None
    fits = max((f for f in range(1, frames, 4) if wan_video_bytes(width, height, f, batch_size) <= available),
               default=0)
    advice = (f"at most {fits} frames fit at this size and batch_size" if fits else
              "not even one frame fits; lower width, height or batch_size")
    return (f"{width}x{height}x{frames} frames with batch_size {batch_size} needs ~{needed / _GB:.1f} GB (latent and "
            f"decoded frames, float32) but this machine holds {available / _GB:.1f} GB: {advice}.")
