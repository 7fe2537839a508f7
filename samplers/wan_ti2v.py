"""Wan2.2 TI2V-5B: a timestep per latent token, and image-to-video by known frames inside the latent itself.

TI2V-5B is the one Wan model on the Wan2.2 VAE's 48-channel latents; diffusers runs it with `expand_timesteps`:
each token of the transformer gets its own timestep, t where the latent is denoised and 0 where a frame is given.
For image-to-video the VAE latent of the start image is the first latent frame, kept as it is throughout
(WanImageToVideoPipeline: `(1 - first_frame_mask) * condition + first_frame_mask * latents` before every forward and
at the end). ComfyUI carries the same in a LATENT: the image latent in `samples` and a `noise_mask` that is 0 on the
given frames (native Wan22ImageToVideoLatent; WAN22.process_timestep and scale_latent_inpaint), which is what this
module reads, so the native node's latent samples here and the pack's Wan2.2 latent node gives the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..vae.wan import WAN22_LATENT_CHANNELS, encode_wan, to_raw
from .latents import check_frame_count, check_image_size
from .wan_image import fit_image


def expands_timesteps(transformer) -> bool:
    """TI2V-5B (48 latent channels) is run with a timestep per token, as diffusers' `expand_timesteps`."""
    return transformer.config.out_channels == WAN22_LATENT_CHANNELS


@dataclass(frozen=True)
class KnownFrames:
    """`condition`: model-space latents [B, C, T, h, w] of the given frames; `mask` [B, 1, T, h, w], 1 where the
    latent is denoised, 0 on given frames (all ones for text-to-video)."""

    condition: torch.Tensor
    mask: torch.Tensor
    patch: tuple[int, int, int]

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - self.mask) * self.condition + self.mask * x

    def timestep(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """[batch, tokens]: t on denoised tokens, 0 on given ones, in the transformer's token order."""
        pt, ph, pw = self.patch
        per_token = self.mask[:, 0, ::pt, ::ph, ::pw] * t
        return per_token.flatten(1).expand(batch, -1)


def known_frames(transformer, latent: dict, model_space: torch.Tensor) -> KnownFrames | None:
    """The known frames of a TI2V-5B run (None for other models): the LATENT's `noise_mask` marks them (ComfyUI's
    convention, 0 = keep), `model_space` holds their latents; no mask = text-to-video, every frame denoised."""
    if not expands_timesteps(transformer):
        return None
    mask = latent.get("noise_mask")
    shape = (model_space.shape[0], 1, *model_space.shape[2:])
    if mask is None:
        mask = torch.ones(shape)
    else:
        mask = _latent_mask(mask, model_space.shape)
    mask = mask.to(model_space.device, torch.float32)
    return KnownFrames(model_space, mask, tuple(transformer.config.patch_size))


def _latent_mask(mask: torch.Tensor, shape) -> torch.Tensor:
    """A noise_mask at latent resolution [B or 1, 1 or C, T, h, w] -> [B, 1, T, h, w]."""
    if mask.ndim != 5 or tuple(mask.shape[2:]) != tuple(shape[2:]) or mask.shape[0] not in (1, shape[0]):
        raise ValueError(f"The latent's noise_mask has shape {tuple(mask.shape)}; a Wan2.2 TI2V latent of shape "
                         f"{tuple(shape)} needs one per latent cell, [1, 1, {shape[2]}, {shape[3]}, {shape[4]}] "
                         "(Wan2.2 Image to Video Latent makes it).")
    return mask.float().mean(dim=1, keepdim=True).expand(shape[0], -1, -1, -1, -1)


TI2V_STRIDE = 32  # the Wan2.2 VAE's 16 pixels per latent cell x the transformer's 2x2 patches


def ti2v_latent(vae, width: int, height: int, length: int, batch_size: int,
                start_image: torch.Tensor | None = None, progress=None) -> dict:
    """A TI2V-5B LATENT as native Wan22ImageToVideoLatent makes it: [B, 48, (length-1)/4+1, H/16, W/16]; with a
    `start_image` its frames (cropped and resized as ComfyUI does) are encoded into the first latent frames, the
    other frames hold the raw latent of zero (the statistics' mean), and `noise_mask` is 0 on the given frames."""
    check_image_size(width, height, TI2V_STRIDE)
    check_frame_count(length)
    if vae.config.z_dim != WAN22_LATENT_CHANNELS:
        raise ValueError("TI2V-5B latents come from the Wan2.2 VAE (48 channels); this is the Wan2.1 VAE: load "
                         "wan2.2_vae.safetensors.")
    shape = (1, WAN22_LATENT_CHANNELS, (length - 1) // 4 + 1, height // 16, width // 16)
    if start_image is None:
        return {"samples": torch.zeros(shape).repeat(batch_size, 1, 1, 1, 1)}
    frames = fit_image(start_image[:length], width, height)
    frames = frames[: 1 + (frames.shape[0] - 1) // 4 * 4]  # whole latent frames: 4n+1
    given = encode_wan(vae, frames, tile="off", progress=progress)
    samples = to_raw(torch.zeros(shape))
    samples[:, :, : given.shape[2]] = given
    mask = torch.ones(1, 1, *shape[2:])
    mask[:, :, : given.shape[2]] = 0
    return {"samples": samples.repeat(batch_size, 1, 1, 1, 1), "noise_mask": mask.repeat(batch_size, 1, 1, 1, 1)}
