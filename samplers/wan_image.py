"""Wan2.1 image-to-video (I2V) and first-last-frame-to-video (FLF2V): the conditioning, and the model inputs a sampler
passes with every forward.

The conditioning uses ComfyUI's own keys, so native WanImageToVideo / WanFirstLastFrameToVideo output samples here
and the pack's Wan Image to Video output samples under the core KSampler:
- `concat_latent_image`: raw VAE latents [1, 16, T, h, w] of the conditioning video: the start frames, mid-grey
  frames, the end frames (diffusers' `prepare_latents` encodes the same video: zeros in -1..1 are mid-grey);
- `concat_mask` [1, 4, T, h, w]: ComfyUI's meaning, 0 where a frame is given; the model reads 1 - mask. Its 4
  channels are the 4 video frames of each latent frame, the first latent frame holding frame 0 four times, as
  diffusers' `mask_lat_size` (a [1, 1, T, h, w] mask, native WanImageToVideo's, is averaged and repeated as native);
- `clip_vision_output`: CLIP features (`penultimate_hidden_states`), those of the start and end image joined along
  the tokens for FLF2V (ComfyUI's way).
The transformer then reads [noise latents, 1 - mask, normalised condition latents] as 36 channels, with the CLIP
tokens in its cross-attention, as `WanImageToVideoPipeline` and ComfyUI's WAN21.concat_cond build them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..vae.wan import encode_wan_pixels, to_model_space
from ..vision.clip import check_image
from .latents import WAN_LATENT_CHANNELS, WAN_STRIDE, check_frame_count, check_image_size

CONCAT_LATENT, CONCAT_MASK, CLIP_OUTPUT = "concat_latent_image", "concat_mask", "clip_vision_output"
_TEMPORAL = 4
_MID_GREY = 0.5


# ------------------------------------------------------------------------------------------------ building


def fit_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE [N, H, W, C] -> [N, height, width, 3]: cropped to the video's aspect ratio around the centre, then
    resized bilinearly, as ComfyUI's WanImageToVideo does (comfy.utils.common_upscale(..., "bilinear", "center")).
    An image of the video's size is left exactly as it is."""
    pixels = image[..., :3].movedim(-1, 1).float()
    old_height, old_width = pixels.shape[-2:]
    old_aspect, new_aspect = old_width / old_height, width / height
    x = round((old_width - old_width * (new_aspect / old_aspect)) / 2) if old_aspect > new_aspect else 0
    y = round((old_height - old_height * (old_aspect / new_aspect)) / 2) if old_aspect < new_aspect else 0
    pixels = pixels.narrow(-2, y, old_height - 2 * y).narrow(-1, x, old_width - 2 * x)
    return F.interpolate(pixels, size=(height, width), mode="bilinear").movedim(1, -1)


def conditioning_video(width: int, height: int, length: int, start_image: torch.Tensor | None,
                       end_image: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The video the VAE encodes, [length, height, width, 3] in 0..1, and which of its frames are given [length]:
    the first frames of `start_image` at the start, the last frames of `end_image` at the end, mid-grey between."""
    video = torch.full((length, height, width, 3), _MID_GREY)
    given = torch.zeros(length, dtype=torch.bool)
    if start_image is not None:
        start = fit_image(start_image[:length], width, height)
        video[:start.shape[0]], given[:start.shape[0]] = start, True
    if end_image is not None:
        end = fit_image(end_image[-length:], width, height)
        video[length - end.shape[0]:], given[length - end.shape[0]:] = end, True
    return video, given


def fold_given_frames(given: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Frames given [F] -> `concat_mask` [1, 4, T, h, w] (0 = given): frame 0 fills the first latent frame's 4
    channels, frame j > 0 is channel (j - 1) % 4 of latent frame (j - 1) // 4 + 1 (diffusers' mask_lat_size)."""
    rows = torch.cat([given[:1].repeat(_TEMPORAL), given[1:]])
    mask = (~rows).float().view(-1, _TEMPORAL, 1, 1).expand(-1, -1, height, width)
    return mask.transpose(0, 1).unsqueeze(0).contiguous()


def build_image_conditioning(vae, width: int, height: int, length: int, start_image: torch.Tensor | None = None,
                             end_image: torch.Tensor | None = None, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(`concat_latent_image`, `concat_mask`) for a start and / or end image; `vae` is the loaded AutoencoderKLWan."""
    check_image_to_video_inputs(width, height, length, start_image, end_image)
    video, given = conditioning_video(width, height, length, start_image, end_image)
    pixels = (video.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1).to(next(vae.parameters()).dtype)
    latent = encode_wan_pixels(vae, pixels, tile="off", progress=progress)
    return latent, fold_given_frames(given, *latent.shape[-2:])


def check_image_to_video_inputs(width: int, height: int, length: int, start_image, end_image) -> None:
    check_image_size(width, height, WAN_STRIDE)
    check_frame_count(length)
    if start_image is None and end_image is None:
        raise ValueError("Give a start_image (image-to-video) or a start_image and an end_image (first-last-frame "
                         "model): without an image there is nothing to condition on.")
    for name, image in (("start_image", start_image), ("end_image", end_image)):
        if image is not None:
            check_image(image, name)
    if start_image is not None and end_image is not None and start_image.shape[0] + end_image.shape[0] > length:
        raise ValueError(f"start_image ({start_image.shape[0]} frames) and end_image ({end_image.shape[0]}) overlap "
                         f"in a {length}-frame video: give fewer frames or a longer length.")


def attach_image(conditioning, values: dict) -> list:
    """A copy of CONDITIONING with `values` set on every entry (ComfyUI's conditioning_set_values); the input is not
    changed."""
    return [[embeds, {**extras, **values}] for embeds, extras in conditioning]


# ------------------------------------------------------------------------------------------------ model inputs


@dataclass(frozen=True)
class ImageInputs:
    """What one conditioning adds to every forward of an image-to-video model."""

    concat: torch.Tensor  # [B, 20, T, h, w]: 1 - mask, normalised condition latents; the model's dtype and device
    image_embeds: torch.Tensor | None  # [B * images, tokens, width]: CLIP features as the model's embedder reads them

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.concat], dim=1)


def is_image_to_video(config) -> bool:
    return config.in_channels > config.out_channels


def image_inputs(transformer, conditioning, name: str, latent_shape, device, dtype) -> ImageInputs | None:
    """The image inputs one CONDITIONING gives `transformer` for latents of `latent_shape` (None for a text-to-video
    model); ValueError when the model and the conditioning do not fit together."""
    config = transformer.config
    extras = conditioning[0][1] if conditioning else {}
    latent, mask, clip = extras.get(CONCAT_LATENT), extras.get(CONCAT_MASK), extras.get(CLIP_OUTPUT)
    if not is_image_to_video(config):
        if latent is not None or clip is not None:
            raise ValueError("The conditioning carries an image but this is a Wan text-to-video model: load a Wan2.1 "
                             "I2V (or FLF2V) transformer, or leave out the image-to-video node.")
        return None
    if latent is None:
        raise ValueError(f"This is a Wan image-to-video model and the {name} conditioning has no image: put a Wan "
                         "Image to Video node (start image, VAE, CLIP vision output) between the text encoder and the "
                         "sampler, for the positive and the negative prompt alike.")
    batch, _, frames, height, width = latent_shape
    concat = _concat(latent, mask, config.in_channels - config.out_channels, frames, height, width, name)
    _check_frames_fit_model(config, concat)
    return ImageInputs(to_batch(concat, batch, name).to(device, dtype),
                       _image_embeds(config, clip, batch, name, device, dtype))


def _concat(latent, mask, channels: int, frames: int, height: int, width: int, name: str) -> torch.Tensor:
    if latent.ndim != 5 or latent.shape[1] != WAN_LATENT_CHANNELS or channels != WAN_LATENT_CHANNELS + _TEMPORAL:
        raise ValueError(f"The {name} conditioning's image latent has shape {tuple(latent.shape)}; this model reads "
                         f"{channels - _TEMPORAL} latent channels (encode the image with the Wan2.1 VAE).")
    if latent.shape[-2:] != (height, width) or latent.shape[2] != frames:
        raise ValueError(f"The image conditioning was made for {latent.shape[2]} latent frames of "
                         f"{latent.shape[-1] * 8}x{latent.shape[-2] * 8} but the latent is {frames} frames of "
                         f"{width * 8}x{height * 8}: sample the latent output of the same Wan Image to Video node.")
    latent = to_model_space(latent.float())
    if mask is None:  # as ComfyUI: no mask, no frame marked as given
        model_mask = torch.zeros(latent.shape[0], _TEMPORAL, frames, height, width)
    else:
        mask = mask.float()
        if mask.shape[1] != _TEMPORAL:
            mask = mask.mean(dim=1, keepdim=True)
        model_mask = F.pad(1.0 - mask, (0, 0, 0, 0, 0, max(0, frames - mask.shape[2])))[:, :, :frames]
        if model_mask.shape[-2:] != (height, width):
            raise ValueError(f"The {name} conditioning's concat_mask is {tuple(mask.shape[-2:])} latent cells, the "
                             f"latent {(height, width)}: make both with the same image-to-video node.")
        model_mask = model_mask.expand(-1, _TEMPORAL, -1, -1, -1)
    if model_mask.shape[0] != latent.shape[0]:
        model_mask = to_batch(model_mask, latent.shape[0], name)
    return torch.cat([model_mask, latent], dim=1)


def _check_frames_fit_model(config, concat: torch.Tensor) -> None:
    """An end frame needs a first-last-frame model: I2V models were never trained on one."""
    end_given = bool((concat[:, :_TEMPORAL, -1] > 0.5).any()) and concat.shape[2] > 1
    if end_given and not config.get("pos_embed_seq_len"):
        raise ValueError("The conditioning gives an end frame but this is a Wan image-to-video (I2V) model, which "
                         "only takes a start frame: load the Wan2.1 FLF2V (first-last-frame) model, or remove the "
                         "end image.")


def _image_embeds(config, clip, batch: int, name: str, device, dtype) -> torch.Tensor | None:
    if not config.get("image_dim"):
        return None  # models without a CLIP image embedder ignore CLIP features, as in ComfyUI
    if clip is None:
        raise ValueError(f"This Wan image-to-video model reads CLIP image features and the {name} conditioning has "
                         "none: connect a CLIP Vision Encode (clip_vision_h) of the start image to the Wan Image to "
                         "Video node.")
    embeds = to_batch(clip["penultimate_hidden_states"].float(), batch, name)
    return model_image_embeds(config, embeds).to(device, dtype)


def model_image_embeds(config, embeds: torch.Tensor) -> torch.Tensor:
    """CLIP features [B, tokens, D] (start and end image joined for FLF2V, ComfyUI's form) -> what diffusers' image
    embedder takes: the same, or [2B, tokens / 2, D] for FLF2V, whose embedder folds the pairs back itself."""
    if embeds.shape[-1] != config.image_dim:
        raise ValueError(f"The CLIP features are {embeds.shape[-1]} wide; this model reads {config.image_dim} (CLIP "
                         "ViT-H/14: load clip_vision_h.safetensors).")
    images = config.get("pos_embed_seq_len")
    if not images:
        return embeds
    if embeds.shape[1] != images:
        raise ValueError(f"This first-last-frame model reads the CLIP features of the start and the end image "
                         f"({images} tokens) and got {embeds.shape[1]}: encode both images with CLIP Vision Encode "
                         "and connect both to the Wan Image to Video node.")
    return embeds.reshape(-1, images // 2, embeds.shape[-1])


def to_batch(tensor: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """One image (or one per video) for a batch of `batch` videos."""
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] != 1:
        raise ValueError(f"The {name} conditioning's image holds {tensor.shape[0]} entries for a batch of {batch}: "
                         "give one image for the whole batch.")
    return tensor.expand(batch, *tensor.shape[1:])
