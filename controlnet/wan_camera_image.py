"""The start image of a Wan2.1 Fun-Camera video: the conditioning native WanCameraImageToVideo builds, and what a
sampler feeds the model from it.

ComfyUI's keys, as samplers/wan_image.py uses them, with the Fun-Camera meaning (ComfyUI's WAN21_Camera):
- `concat_latent_image` [B, 16, T, h, w] raw latents: the start image's own frames encoded alone at the front, the
  rest the raw value of a zero model-space latent (native `Wan21().process_out(zeros)`); the model reads all 16
  channels normalised, behind the noise (32 input channels, no mask channels: the mask is set but not read);
- `concat_mask` [1, 4, T, h, w]: 0 for latent frames holding the start image (as native, for other models);
- `clip_vision_output`: optional; without it the image cross-attention reads the prompt (controlnet/wan_camera.py).
No start image: nothing is set and the model reads zeros, as native.
"""

from __future__ import annotations

import torch

from ..samplers.latents import WAN_LATENT_CHANNELS, WAN_STRIDE, check_frame_count, check_image_size
from ..samplers.wan_image import (
    CLIP_OUTPUT, CONCAT_LATENT, CONCAT_MASK, ImageInputs, attach_image, fit_image, fold_given_frames, model_image_embeds,
    to_batch,
)
from ..vae.wan import encode_wan_pixels, to_model_space, to_raw
from ..vision.clip import check_image
from .wan_camera import CONDITIONING_KEY
from .camera_embedding import check_camera_embedding

_TEMPORAL = 4


def camera_latent_shape(batch_size: int, width: int, height: int, length: int) -> tuple[int, ...]:
    return batch_size, WAN_LATENT_CHANNELS, (length - 1) // _TEMPORAL + 1, height // 8, width // 8


def start_image_conditioning(vae, width: int, height: int, length: int,
                             start_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(`concat_latent_image`, `concat_mask`) for `start_image` (its first `length` frames), as native."""
    _, channels, frames, h, w = camera_latent_shape(1, width, height, length)
    pixels = fit_image(start_image[:length], width, height)  # [N, H, W, 3] 0..1
    video = (pixels.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1).to(next(vae.parameters()).dtype)
    encoded = encode_wan_pixels(vae, video, tile="off")
    latent = to_raw(torch.zeros(1, channels, frames, h, w), vae.config)
    latent[:, :, :encoded.shape[2]] = encoded[:, :, :frames]
    mask = fold_given_frames(torch.arange(length) < pixels.shape[0], h, w)
    return latent, mask


def check_camera_video_inputs(width: int, height: int, length: int, start_image, camera_conditions) -> None:
    check_image_size(width, height, WAN_STRIDE)
    check_frame_count(length)
    if start_image is not None:
        check_image(start_image, "start_image")
    if camera_conditions is not None:
        check_camera_embedding(camera_conditions)
        expected = ((length - 1) // _TEMPORAL + 1, height, width)
        if tuple(camera_conditions.shape[2:]) != expected:
            raise ValueError(
                f"The camera embedding is for {camera_conditions.shape[2]} latent frames of "
                f"{camera_conditions.shape[4]}x{camera_conditions.shape[3]} but this video has {expected[0]} of "
                f"{width}x{height}: give the camera node the same width, height and length.")


def camera_video_conditioning(conditioning, concat: tuple | None, clip_vision_output, camera_conditions) -> list:
    """A copy of CONDITIONING with the keys native WanCameraImageToVideo sets (only those given)."""
    values = {}
    if concat is not None:
        values[CONCAT_LATENT], values[CONCAT_MASK] = concat
    if camera_conditions is not None:
        values[CONDITIONING_KEY] = camera_conditions
    if clip_vision_output is not None:
        values[CLIP_OUTPUT] = clip_vision_output
    return attach_image(conditioning, values)


def camera_image_inputs(transformer, conditioning, name: str, latent_shape, device, dtype) -> ImageInputs:
    """The 16 image channels a Fun-Camera model reads behind the noise, and the CLIP features when given."""
    extras = conditioning[0][1] if conditioning else {}
    latent, clip = extras.get(CONCAT_LATENT), extras.get(CLIP_OUTPUT)
    batch, _, frames, height, width = latent_shape
    if latent is None:
        concat = torch.zeros(batch, WAN_LATENT_CHANNELS, frames, height, width)
    else:
        if latent.ndim != 5 or latent.shape[1] != WAN_LATENT_CHANNELS or latent.shape[2:] != (frames, height, width):
            raise ValueError(f"The {name} conditioning's start image latent is {tuple(latent.shape)} but the latent is "
                             f"{tuple(latent_shape)}: sample the latent of the same Wan Camera Image to Video node.")
        concat = to_batch(to_model_space(latent.float()), batch, name)
    embeds = None
    if clip is not None:
        embeds = model_image_embeds(transformer.config, to_batch(clip["penultimate_hidden_states"].float(), batch,
                                                                 name)).to(device, dtype)
    return ImageInputs(concat.to(device, dtype), embeds)
