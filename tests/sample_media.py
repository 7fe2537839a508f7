"""Small input pictures and videos with structure (gradients, a moving square, grain) for the image- and
video-to-video tests, and the input files the integration server gets."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from pack_source import module

write_mp4 = module("video/mp4.py").write_mp4

INPUT_VIDEO = "input_video.mp4"
INPUT_IMAGE = "input_image.png"


def moving_frames(width: int, height: int, count: int, seed: int = 0) -> list[Image.Image]:
    """A bright square sliding over a colour gradient that ripples in time, plus fixed grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    side = max(4, min(width, height) // 3)
    frames = []
    for f in range(count):
        frame = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 5 + f / 2)], axis=-1) * 180
        left = (4 + 3 * f) % max(1, width - side)
        frame[height // 4:height // 4 + side, left:left + side] = (250, 240, 60)
        frame += rng.normal(0, 6, frame.shape)
        frames.append(Image.fromarray(frame.clip(0, 255).astype(np.uint8)))
    return frames


def as_image_batch(frames: list[Image.Image]) -> torch.Tensor:
    """ComfyUI's IMAGE: [F, H, W, 3] float32 in 0..1, as Load Image / Load Video give."""
    return torch.from_numpy(np.stack([np.asarray(f, dtype=np.float32) / 255.0 for f in frames]))


def write_sample_inputs(directory: str, width: int, height: int, frames: int) -> None:
    """INPUT_VIDEO (H.264, `frames` frames) and INPUT_IMAGE (its first frame, PNG) in `directory`."""
    os.makedirs(directory, exist_ok=True)
    pictures = moving_frames(width, height, frames)
    write_mp4(as_image_batch(pictures), os.path.join(directory, INPUT_VIDEO), fps=16.0)
    pictures[0].save(os.path.join(directory, INPUT_IMAGE))
