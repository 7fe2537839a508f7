"""Images -> CLIP vision features, as ComfyUI's CLIP Vision Encode makes them, in ComfyUI's CLIP_VISION_OUTPUT form.

Wan2.1 image-to-video reads the penultimate hidden states (all 257 tokens, no final norm): diffusers'
`WanImageToVideoPipeline.encode_image` takes `hidden_states[-2]`, the original Wan code runs 31 of the 32 blocks,
ComfyUI keeps `penultimate_hidden_states`; the three are the same tensor.

The resize follows ComfyUI's `clip_preprocess` (comfy/clip_model.py), so the pack's features equal native ones for
any image size: "center" scales the short side to the model's size (bicubic, antialiased) and crops the middle,
"none" squashes the whole image to a square; then values are rounded to 8 bits and normalised with CLIP's mean and
std. diffusers' CLIPImageProcessor resizes with PIL instead, which differs slightly for images that need resizing;
for an image already at the model's size (224 x 224) the two are equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..loaders.cast_layers import execution_device

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CROPS = ("center", "none")


class ClipVisionOutput:
    """ComfyUI's CLIP_VISION_OUTPUT protocol (comfy.clip_vision.Output): fields read as attributes or items, so
    native nodes (WanImageToVideo, unCLIP, style models) take the pack's output and the pack takes theirs."""

    def __getitem__(self, key):
        return getattr(self, key)

    def __setitem__(self, key, value):
        setattr(self, key, value)


def clip_pixels(image: torch.Tensor, size: int, crop: str = "center") -> torch.Tensor:
    """IMAGE [B, H, W, C] in 0..1 -> normalised pixel values [B, 3, size, size] (ComfyUI's clip_preprocess)."""
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, not '{crop}'.")
    pixels = image[..., :3].movedim(-1, 1).float()
    height, width = pixels.shape[-2:]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        target = (round(scale * height), round(scale * width)) if crop == "center" else (size, size)
        pixels = F.interpolate(pixels, size=target, mode="bicubic", antialias=True)
        top, left = (pixels.shape[2] - size) // 2, (pixels.shape[3] - size) // 2
        pixels = pixels[:, :, top:top + size, left:left + size]
    pixels = torch.clip(255.0 * pixels, 0, 255).round() / 255.0
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    return (pixels - mean) / std


def encode_clip_vision(model, image: torch.Tensor, crop: str = "center") -> ClipVisionOutput:
    """CLIP features of every image of the batch, on the CPU in float32: `penultimate_hidden_states` (what Wan
    reads), `last_hidden_state`, `image_embeds` (the projected pooled output; None for a tower without projection)
    and `image_sizes`."""
    check_image(image, "image")
    pixels = clip_pixels(image, model.config.image_size, crop)
    device = execution_device(model)
    out = model(pixel_values=pixels.to(device, model.dtype), output_hidden_states=True)
    result = ClipVisionOutput()
    result.last_hidden_state = out.last_hidden_state.float().cpu()
    result.penultimate_hidden_states = out.hidden_states[-2].float().cpu()
    embeds = getattr(out, "image_embeds", None)
    result.image_embeds = None if embeds is None else embeds.float().cpu()
    result.image_sizes = [pixels.shape[1:]] * pixels.shape[0]
    return result


def joined_clip_outputs(start: ClipVisionOutput | None, end: ClipVisionOutput | None) -> ClipVisionOutput | None:
    """First-last-frame models read the start image's tokens followed by the end image's (ComfyUI's
    WanFirstLastFrameToVideo; diffusers encodes [image, last_image] and the model's image embedder folds them)."""
    if start is None or end is None:
        return start if end is None else end
    joined = ClipVisionOutput()
    joined.penultimate_hidden_states = torch.cat([start.penultimate_hidden_states, end.penultimate_hidden_states],
                                                 dim=-2)
    return joined


def check_image(image, name: str) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4) or image.shape[0] == 0:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name} must be an IMAGE [N, H, W, 3], got {shape}.")
    if not torch.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
