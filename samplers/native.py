"""What ComfyUI's own samplers need to run a loaded Sana or Wan transformer as a native MODEL (comfy_bridge's
native MODEL adapter): the model call in ComfyUI's terms, the default shift, the latent space and a memory estimate.

ComfyUI calls a flow model with x (the model-space latent at noise level sigma), its timestep sigma * 1000 and the
CONDITIONING's embeddings (and attention mask, where the model uses one) and wants the velocity back; these are the
same calls our samplers make (samplers/wan.py, samplers/sana.py), so KSampler(euler) on the adapter equals our
flow_euler run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .sana import SANA_LATENT_SCALE, sana_memory_estimate
from .wan import wan_memory_estimate
from .wan_image import is_image_to_video, model_image_embeds
from .wan_ti2v import expands_timesteps

# forward(x, timestep, context, attention_mask, concat, clip_features): the velocity; timestep is ComfyUI's
# sigma * 1000; concat (image-to-video: mask and image latents, ComfyUI's c_concat) and clip_features (its clip_fea)
# only for models that read them.
Forward = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class NativeSpec:
    family: str  # "wan" (ComfyUI's Wan21 latent format) or "sana" (raw DC-AE latents x latent_scale)
    shift: float  # the model's default flow shift: ComfyUI's sampling_settings, ModelSamplingSD3 replaces it
    latent_channels: int
    latent_scale: float
    uses_mask: bool  # whether the CONDITIONING's attention mask reaches the model
    forward: Forward
    memory: Callable[[tuple], int]  # bytes of activations for one call on a [B, C, ...] input
    image_to_video: bool = False  # ComfyUI builds c_concat (WAN21.concat_cond) and clip_fea for it
    per_frame_timesteps: bool = False  # Wan2.2 TI2V-5B: ComfyUI's WAN22 timesteps from the denoise mask, Wan22 latents


def native_spec(transformer, info: dict) -> NativeSpec:
    """The spec for a handle's transformer and info (family, variant); ValueError for models ComfyUI's samplers
    cannot drive through the plain model call."""
    family, variant = info.get("family"), info.get("variant")
    if family == "wan":
        if variant.is_vace:
            raise ValueError("This is a Wan VACE model: it needs its control inputs, which the MODEL adapter does not "
                             "pass. Sample it with the Wan Sampler.")
        if variant.is_camera:
            raise ValueError("This is a Wan Fun-Camera model: the MODEL adapter does not pass its camera path. Sample "
                             "it with the Wan Sampler (Wan Camera Image to Video, or native WanCameraImageToVideo).")
        return NativeSpec("wan", variant.default_shift, transformer.config.out_channels, 1.0, False,
                          _wan_forward(transformer), lambda shape: wan_memory_estimate(transformer, shape),
                          is_image_to_video(transformer.config), expands_timesteps(transformer))
    if family == "sana":
        if variant.is_sprint:
            raise ValueError("This is a Sana-Sprint model: it samples with the sCM solver and its guidance "
                             "embedding, not with ComfyUI's flow samplers. Use the Sana Sprint Sampler.")
        return NativeSpec("sana", variant.default_shift, transformer.config.in_channels, SANA_LATENT_SCALE, True,
                          _sana_forward(transformer),
                          lambda shape: sana_memory_estimate(transformer, shape, guided=False))
    raise ValueError(f"The MODEL adapter takes a Sana or Wan transformer, got a '{family}' model.")


def _wan_forward(transformer) -> Forward:
    config = transformer.config

    def forward(x, timestep, context, attention_mask=None, concat=None, clip_features=None):
        # No mask: prompts are zero-padded to 512 tokens, as Wan was trained (and as samplers/wan.py and ComfyUI's
        # own Wan model run them).
        image = {}
        if timestep.ndim == 2:  # TI2V-5B: one per latent frame (ComfyUI's WAN22) -> one per token (diffusers')
            _, patch_h, patch_w = config.patch_size
            timestep = timestep.repeat_interleave((x.shape[-2] // patch_h) * (x.shape[-1] // patch_w), dim=1)
        if concat is not None:
            x = torch.cat([x, concat.to(x.dtype)], dim=1)
        if config.get("image_dim"):
            if clip_features is None:
                raise ValueError("This Wan image-to-video model reads CLIP image features: give WanImageToVideo (or "
                                 "the pack's Wan Image to Video) a clip_vision_output.")
            image["encoder_hidden_states_image"] = model_image_embeds(config, clip_features).to(x.dtype)
        return transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=context, return_dict=False,
                           **image)[0]

    return forward


def _sana_forward(transformer) -> Forward:
    def forward(x, timestep, context, attention_mask=None):
        if attention_mask is None:
            attention_mask = torch.ones(context.shape[:2], dtype=torch.int64, device=context.device)
        return transformer(x, encoder_hidden_states=context, encoder_attention_mask=attention_mask,
                           timestep=timestep * transformer.config.timestep_scale, return_dict=False)[0]

    return forward
