"""Wan Fun-Camera (alibaba-pai VideoX-Fun; ComfyUI's CameraWanModel): a Wan2.1 transformer whose patch embedding
gets the output of a small `control_adapter` fed with the Plücker embedding of the camera path.

diffusers (0.42) has no Fun-Camera model, so the adapter is this module's own (the layout of the released files:
8x8 pixel unshuffle, a 2x2 patch convolution to the model width, one residual block of two 3x3 convolutions), and it
is attached to diffusers' `WanTransformer3DModel` with hooks instead of a copied transformer: a forward pre-hook
takes the `camera_conditions` argument off the model's call, a forward hook on `patch_embedding` adds the adapter's
output to the patch embeddings, as ComfyUI's forward_orig does (no conditions: the model runs as plain Wan).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .camera_embedding import EMBEDDING_CHANNELS, check_camera_embedding

CONDITIONING_KEY = "camera_conditions"  # ComfyUI's own key (WanCameraImageToVideo), so native conditioning works
ADAPTER = "control_adapter"
_UNSHUFFLE = 8
_TEXT_TOKENS = 512  # diffusers' Wan attention takes all but the last 512 context tokens as the image's
_OFFSET = "_camera_offset"  # the adapter output waiting for the patch embedding (a plain attribute)


class WanCameraResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x))) + x


class WanCameraAdapter(nn.Module):
    """[B, C, F, H, W] pixel-resolution camera embedding -> [B, width, F, H / 16, W / 16] patch-embedding offsets."""

    def __init__(self, in_channels: int, width: int, patch: tuple[int, int]):
        super().__init__()
        self.pixel_unshuffle = nn.PixelUnshuffle(_UNSHUFFLE)
        self.conv = nn.Conv2d(in_channels * _UNSHUFFLE ** 2, width, kernel_size=patch, stride=patch)
        self.residual_blocks = nn.Sequential(WanCameraResidualBlock(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        out = self.residual_blocks(self.conv(self.pixel_unshuffle(x)))
        return out.view(batch, frames, *out.shape[1:]).permute(0, 2, 1, 3, 4)


def attach_camera_adapter(model: nn.Module, in_channels: int = EMBEDDING_CHANNELS) -> nn.Module:
    """`model` (a WanTransformer3DModel) with a `control_adapter` submodule and the hooks that apply it. The hooks
    reach the adapter through the module they are called on (no closures), so a copied model applies its own."""
    width = model.config.num_attention_heads * model.config.attention_head_dim
    model.add_module(ADAPTER, WanCameraAdapter(in_channels, width, tuple(model.config.patch_size[1:])))
    model.register_forward_pre_hook(_take_conditions, with_kwargs=True)
    model.patch_embedding.register_forward_hook(_add_camera)
    if model.config.image_dim:
        model.condition_embedder.register_forward_hook(_text_as_image_context)
    return model


def _take_conditions(model, args, kwargs):
    """Every call starts afresh: the adapter's output for this call's conditions, or nothing."""
    conditions = kwargs.pop(CONDITIONING_KEY, None)
    offset = None if conditions is None else getattr(model, ADAPTER)(conditions)
    model.patch_embedding.__dict__[_OFFSET] = offset
    return args, kwargs


def _add_camera(patch_embedding, args, output):
    offset = patch_embedding.__dict__.pop(_OFFSET, None)
    return output if offset is None else output + offset.to(output.dtype)


def _text_as_image_context(condition_embedder, args, output):
    """Without CLIP features ComfyUI's CameraWanModel (WanI2VCrossAttention with context_img_len None) runs its image
    cross-attention over the embedded prompt tokens; diffusers' would run it over no tokens. Giving the embedded
    prompt as the image context (diffusers splits off everything before the last 512 tokens) runs it as native."""
    temb, timestep_proj, text, image = output
    if image is not None:
        return output
    if text.shape[1] != _TEXT_TOKENS:
        raise ValueError(f"The prompt has {text.shape[1]} tokens; without CLIP features a Fun-Camera model reads "
                         f"prompts of {_TEXT_TOKENS} tokens (Wan Text Encode's): shorten the prompt or connect the "
                         "start image's CLIP features (clip_vision_output).")
    return temb, timestep_proj, text, text


def is_camera_model(transformer) -> bool:
    return isinstance(getattr(transformer, ADAPTER, None), WanCameraAdapter)


def camera_of(conditioning) -> torch.Tensor | None:
    embeddings = {id(e): e for e in (extras.get(CONDITIONING_KEY) for _, extras in conditioning or ()) if e is not None}
    if len(embeddings) > 1:
        raise ValueError("The conditioning carries several camera embeddings; use one camera node per prompt.")
    return next(iter(embeddings.values()), None)


def camera_model_inputs(transformer, positive, device, dtype) -> Callable[[torch.Tensor], dict]:
    """`inputs(x)`: the extra forward argument for model input `x` ({} without camera conditions, as native), from
    the camera embedding on the positive conditioning (WanCameraImageToVideo gives both prompts the same one)."""
    embedding = camera_of(positive)
    if embedding is None:
        return lambda x: {}
    check_camera_embedding(embedding)
    if not is_camera_model(transformer):
        raise ValueError("The conditioning carries a camera path but this model has no camera adapter: load a Wan2.1 "
                         "Fun-Camera transformer, or remove the camera conditions.")
    embedding = embedding.to(device, dtype)

    def inputs(x: torch.Tensor) -> dict:
        frames, height, width = x.shape[2], x.shape[3] * _UNSHUFFLE, x.shape[4] * _UNSHUFFLE
        if tuple(embedding.shape[2:]) != (frames, height, width):
            raise ValueError(
                f"The camera embedding is for {embedding.shape[2]} latent frames of {embedding.shape[4]}x"
                f"{embedding.shape[3]} but the latent is {frames} frames of {width}x{height}: give the camera node "
                "the same width, height and length as the video.")
        return {CONDITIONING_KEY: embedding.expand(x.shape[0], *embedding.shape[1:])}

    return inputs
