"""A start image (ComfyUI IMAGE) as the first latent frame of an image-to-video latent, as diffusers'
SanaImageToVideoPipeline prepares it: the image at the video's size in -1..1, encoded as a one-frame video by the
Wan VAE (posterior mean), raw (LATENT's convention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

from ..work_units import Progress
from .wan import encode_wan_pixels


def start_image_pixels(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The first image of IMAGE [B, H, W, 3] in 0..1 -> [1, 3, 1, height, width] in -1..1 (float32).

    An image of the video's size goes in as it is, as the pipeline takes a tensor of that size; another size is
    resized (bilinear, antialiased; not cropped, as the pipeline does not crop either).
    """
    if image.ndim != 4 or image.shape[-1] != 3 or image.shape[0] == 0:
        raise ValueError(f"start_image must be an IMAGE [B, H, W, 3], got shape {tuple(image.shape)}.")
    if not torch.isfinite(image).all():
        raise ValueError("start_image contains NaN or infinite values.")
    pixels = image[:1].permute(0, 3, 1, 2).float()
    if pixels.shape[-2:] != (height, width):
        pixels = F.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True).clamp(0, 1)
    return (pixels * 2 - 1).unsqueeze(2)


def encode_start_image(vae: AutoencoderKLWan, image: torch.Tensor, width: int, height: int,
                       progress: Progress | None = None) -> torch.Tensor:
    """Raw latent [1, 16, 1, height/8, width/8] (float32, CPU) of the start image at the video's size."""
    return encode_wan_pixels(vae, start_image_pixels(image, width, height), progress=progress)
