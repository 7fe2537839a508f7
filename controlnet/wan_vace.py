"""Wan VACE conditioning: a control video, masks and reference images -> the control latents that
`WanVACETransformer3DModel` reads, built as diffusers' `WanVACEPipeline` builds them (`preprocess_conditions`,
`prepare_video_latents`, `prepare_masks`), and the model inputs a sampler passes with every forward.

The context is [1, 96, R + T, H/8, W/8] in the transformer's latent space (T latent frames of the video, R of the
reference images, which come first):
- channels 0-15, "inactive": VAE(video * (1 - mask)); 16-31, "reactive": VAE(video * mask), the mask thresholded at
  0.5 (the video in -1..1, so masked-out pixels are mid-grey);
- channels 32-95: the mask's own values, each 8x8 pixel cell folded into 64 channels, resampled to T frames (nearest);
- a reference image is fitted inside the frame (bilinear, aspect kept) on a white canvas and encoded alone: its
  latent in the inactive channels, zeros in the reactive and mask ones; the last reference given comes first.
No video means all-zero (mid-grey) frames, no mask means ones (generate everything), as in the pipeline. So a mask of
ones over a depth / pose / edge video is control, zeros over frames keep them (first/last frame, inpainting), and a
video's own frames with a mask over a region repaint that region.

The sampler's latent has R extra latent frames in front (Wan VACE Conditioning makes it); trim them after sampling
(ComfyUI's TrimVideoLatent with the node's trim_latent), as the pipeline drops them before decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..samplers.latents import WAN_LATENT_CHANNELS, WAN_STRIDE, check_frame_count, check_image_size
from ..vae.wan import encode_wan_pixels, to_model_space

CONDITIONING_KEY = "wan_vace"
_VAE_STRIDE = 8
_TEMPORAL = 4


@dataclass(frozen=True, eq=False)
class WanVACEContext:
    latents: torch.Tensor  # [1, 96, R + T, h, w], float32 on the CPU
    strength: float  # diffusers' conditioning_scale, the same for every VACE block
    reference_frames: int  # R


# ------------------------------------------------------------------------------------------------ checks


def check_vace_inputs(width: int, height: int, length: int, control_video: torch.Tensor | None,
                      control_masks: torch.Tensor | None, reference_images: torch.Tensor | None) -> None:
    """Sizes and frame counts must match exactly: nothing is resized or padded behind the user's back."""
    check_image_size(width, height, WAN_STRIDE)
    check_frame_count(length)
    if control_video is not None:
        if control_video.ndim != 4 or control_video.shape[-1] not in (3, 4):
            raise ValueError(f"control_video must be IMAGE frames [F, H, W, 3], got {tuple(control_video.shape)}.")
        _check_frames("control_video", control_video.shape[:3], width, height, length, "Load Video")
    if control_masks is not None:
        if control_masks.ndim != 3:
            raise ValueError(f"control_masks must be a MASK [F, H, W], got shape {tuple(control_masks.shape)}.")
        _check_frames("control_masks", control_masks.shape, width, height, length, "the mask source")
    if reference_images is not None and (reference_images.ndim != 4 or reference_images.shape[-1] not in (3, 4)
                                         or reference_images.shape[0] == 0):
        raise ValueError(f"reference_image must be an IMAGE [N, H, W, 3], got shape {tuple(reference_images.shape)}.")
    for name, value in (("control_video", control_video), ("control_masks", control_masks),
                        ("reference_image", reference_images)):
        if value is not None and not torch.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or infinite values.")


def _check_frames(name: str, shape, width: int, height: int, length: int, source: str) -> None:
    frames, frame_height, frame_width = shape
    if frames != length:
        raise ValueError(f"{name} has {frames} frames but length is {length}: give as many frames as the video to "
                         f"generate (take {length} frames of {source} with Image From Batch, or set length).")
    if (frame_width, frame_height) != (width, height):
        raise ValueError(f"{name} is {frame_width}x{frame_height} but the video is {width}x{height}: resize it "
                         "(Image Scale / Upscale Image) or set width and height to match.")


# ------------------------------------------------------------------------------------------------ building


def reference_canvas(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE [H, W, 3] in 0..1 -> [3, height, width] in -1..1: fitted inside the frame with bilinear resizing
    (aspect kept) and centred on white, as WanVACEPipeline.preprocess_conditions."""
    pixels = image[..., :3].permute(2, 0, 1).unsqueeze(0).float() * 2 - 1
    image_height, image_width = pixels.shape[-2:]
    scale = min(height / image_height, width / image_width)
    new_height, new_width = int(image_height * scale), int(image_width * scale)
    resized = F.interpolate(pixels, size=(new_height, new_width), mode="bilinear", align_corners=False).squeeze(0)
    top, left = (height - new_height) // 2, (width - new_width) // 2
    canvas = torch.ones(3, height, width)
    canvas[:, top:top + new_height, left:left + new_width] = resized
    return canvas


def fold_mask(mask: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """Pixel mask [F, H, W] -> [64, T, H/8, W/8]: each 8x8 cell's pixels as channels, frames resampled to T (nearest),
    as WanVACEPipeline.prepare_masks (for the 1x2x2 patches of every Wan2.1 model)."""
    frames, height, width = mask.shape
    cells_h, cells_w = height // _VAE_STRIDE, width // _VAE_STRIDE
    folded = mask.view(frames, cells_h, _VAE_STRIDE, cells_w, _VAE_STRIDE).permute(2, 4, 0, 1, 3).flatten(0, 1)
    return F.interpolate(folded.unsqueeze(0), size=(latent_frames, cells_h, cells_w), mode="nearest-exact").squeeze(0)


def build_vace_context(vae, width: int, height: int, length: int, control_video: torch.Tensor | None = None,
                       control_masks: torch.Tensor | None = None, reference_images: torch.Tensor | None = None,
                       strength: float = 1.0) -> WanVACEContext:
    """The VACE context of one video (inputs checked by `check_vace_inputs`); `vae` is the loaded AutoencoderKLWan."""
    check_vace_inputs(width, height, length, control_video, control_masks, reference_images)
    if control_video is None:
        video = torch.zeros(1, 3, length, height, width)
    else:  # IMAGE 0..1 -> -1..1, as VideoProcessor.preprocess_video
        video = control_video[..., :3].permute(3, 0, 1, 2).unsqueeze(0).float() * 2 - 1
    mask = torch.ones(length, height, width) if control_masks is None else control_masks.float()
    vae_dtype = next(vae.parameters()).dtype
    video, split = video.to(vae_dtype), torch.where(mask > 0.5, 1.0, 0.0).to(vae_dtype)[None, None]
    inactive = _encode(vae, video * (1 - split))
    reactive = _encode(vae, video * split)
    latents = torch.cat([inactive, reactive], dim=1)[0]  # [32, T, h, w]
    masks = fold_mask(mask, (length + _TEMPORAL - 1) // _TEMPORAL)
    references = [] if reference_images is None else list(reference_images)
    for image in references:
        canvas = reference_canvas(image, width, height).to(vae_dtype)
        reference = _encode(vae, canvas[None, :, None])[0]  # [16, 1, h, w]
        latents = torch.cat([torch.cat([reference, torch.zeros_like(reference)]), latents], dim=1)
    if references:
        masks = torch.cat([torch.zeros_like(masks[:, :len(references)]), masks], dim=1)
    context = torch.cat([latents.float(), masks.float()]).unsqueeze(0)
    return WanVACEContext(context, float(strength), len(references))


def _encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Normalised latents in the VAE's dtype, as the pipeline keeps them ((raw - mean) / std in float32, cast)."""
    raw = encode_wan_pixels(vae, pixels, tile="off")
    return to_model_space(raw, vae.config).to(next(vae.parameters()).dtype)


# ------------------------------------------------------------------------------------------------ conditioning


def attach_vace(conditioning, context: WanVACEContext) -> list:
    """A copy of CONDITIONING carrying `context` (replacing an earlier one); the input is not changed."""
    return [[embeds, {**extras, CONDITIONING_KEY: context}] for embeds, extras in conditioning]


def vace_of(conditioning) -> WanVACEContext | None:
    contexts = {id(c): c for c in (extras.get(CONDITIONING_KEY) for _, extras in conditioning or ()) if c is not None}
    if len(contexts) > 1:
        raise ValueError("The conditioning carries several Wan VACE contexts; use one Wan VACE Conditioning node.")
    return next(iter(contexts.values()), None)


def vace_model_inputs(transformer, positive, device, dtype) -> Callable[[torch.Tensor], dict]:
    """`inputs(x)`: the extra forward arguments for model input `x` ({} for a model without VACE), from the VACE
    context on the positive conditioning (the pipeline gives cond and uncond the same one)."""
    context = vace_of(positive)
    layers = getattr(transformer.config, "vace_layers", None)
    if context is None and not layers:
        return lambda x: {}
    if context is None:
        raise ValueError("This is a Wan VACE model: connect a Wan VACE Conditioning node (control video, masks or "
                         "reference images) between the text encoder and the sampler.")
    if not layers:
        raise ValueError("The conditioning carries Wan VACE controls but this model is not a VACE model: load a "
                         "Wan2.1 VACE transformer, or remove the Wan VACE Conditioning node.")
    if context.latents.shape[1] != transformer.config.vace_in_channels:
        raise ValueError(f"The VACE context has {context.latents.shape[1]} channels; this model reads "
                         f"{transformer.config.vace_in_channels}.")
    latents = context.latents.to(device, dtype)
    # As the pipeline: the strength of every VACE block, float32 then the model's dtype.
    scale = torch.tensor([context.strength] * len(layers)).to(device, dtype)

    def inputs(x: torch.Tensor) -> dict:
        if x.shape[2:] != latents.shape[2:]:
            raise ValueError(
                f"The latent is [{', '.join(map(str, x.shape[2:]))}] (frames, height, width) but the VACE "
                f"conditioning was made for [{', '.join(map(str, latents.shape[2:]))}] (with "
                f"{context.reference_frames} reference frames in front): sample the latent output of the Wan VACE "
                "Conditioning node.")
        return {"control_hidden_states": latents.expand(x.shape[0], *latents.shape[1:]),
                "control_hidden_states_scale": scale}

    return inputs


def vace_latent(context: WanVACEContext, batch_size: int) -> torch.Tensor:
    """The empty latent to sample with `context`: its reference frames in front of the video's."""
    _, _, frames, height, width = context.latents.shape
    return torch.zeros(batch_size, WAN_LATENT_CHANNELS, frames, height, width)
