"""Wan2.2 TI2V-5B's latent: empty for text-to-video, or with the start image's frames for image-to-video."""

from __future__ import annotations

import torch

from .. import comfy_bridge as bridge
from ..samplers.wan_ti2v import TI2V_STRIDE, ti2v_latent
from .progress import unit_progress


class WanTI2VLatent:
    DESCRIPTION = ("The latent Wan2.2 TI2V-5B samples: 48 channels of the Wan2.2 VAE at 1/16 of the size; with a "
                   "start_image, its VAE latent as the first frame, kept while the rest is denoised (the same LATENT "
                   "as the core Wan22ImageToVideoLatent node).")
    CATEGORY = "Wan"
    FUNCTION = "generate"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("WAN_VAE", {"tooltip": "The Wan2.2 VAE (wan2.2_vae.safetensors)."}),
            "width": ("INT", {"default": 1280, "min": TI2V_STRIDE, "max": 4096, "step": TI2V_STRIDE}),
            "height": ("INT", {"default": 704, "min": TI2V_STRIDE, "max": 4096, "step": TI2V_STRIDE}),
            "length": ("INT", {"default": 121, "min": 1, "max": 1001, "step": 4, "tooltip": "Frames, 4n+1 (24 fps)."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64}),
        }, "optional": {"start_image": ("IMAGE", {"tooltip": "Image-to-video: the first frame(s)."})}}

    def generate(self, vae, width, height, length, batch_size, start_image=None):
        model = vae.load() if start_image is not None else vae.module
        with torch.inference_mode():
            latent = ti2v_latent(model, width, height, length, batch_size, start_image, unit_progress()[0])
        return ({k: v.to(bridge.intermediate_device()) for k, v in latent.items()},)


NODE_CLASS_MAPPINGS = {"WanTI2VLatent": WanTI2VLatent}
NODE_DISPLAY_NAME_MAPPINGS = {"WanTI2VLatent": "Wan2.2 TI2V Latent"}
