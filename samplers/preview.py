"""Live previews of a latent during sampling, without a VAE.

Sana's DC-AE latent has no published latent->RGB factors (ComfyUI's previewers need them), so the preview shows
the latent's three principal components over channels: the image's layout and large shapes, in false colours.
"""

from __future__ import annotations

import torch
from PIL import Image


def principal_components_image(latent: torch.Tensor) -> Image.Image:
    """First sample (first frame for video) of [B,C,H,W] / [B,C,T,H,W] as an RGB image of its top-3 components."""
    x = latent[0, :, 0] if latent.ndim == 5 else latent[0]
    channels, height, width = x.shape
    pixels = x.reshape(channels, -1).T.float()
    pixels = pixels - pixels.mean(dim=0)
    _, _, v = torch.linalg.svd(pixels, full_matrices=False)
    rgb = pixels @ v[: min(3, channels)].T
    if rgb.shape[1] < 3:
        rgb = torch.nn.functional.pad(rgb, (0, 3 - rgb.shape[1]))
    low, high = rgb.quantile(0.01, dim=0), rgb.quantile(0.99, dim=0)
    rgb = ((rgb - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
    array = (rgb.reshape(height, width, 3) * 255).to(torch.uint8).cpu().numpy()
    return Image.fromarray(array)
