"""Sana-Sprint node: one- to four-step sampling with the sCM solver and the guidance embedding."""

from __future__ import annotations

import torch

from .. import comfy_bridge as bridge
from ..controlnet.sana import refuse_controls
from ..samplers.preview import principal_components_image
from ..samplers.sana import check_sana_latent, sana_memory_estimate
from ..samplers.scm import (
    MAX_STEPS, MAX_TRIGFLOW_TIME, check_sprint_model, sample_sana_sprint, validate_sprint_sampling,
)
from .options import DENOISE_INPUT

TIME_INPUT = {"min": 0.01, "max": MAX_TRIGFLOW_TIME, "step": 0.01, "round": 0.00001}


class SanaSprintSampler:
    DESCRIPTION = ("Samples a Sana-Sprint latent from noise in 1-4 steps (sCM), as diffusers' SanaSprintPipeline, or "
                   "from an encoded image with denoise < 1 (SanaSprintImg2ImgPipeline). Sprint has no negative prompt "
                   "and no CFG.")
    CATEGORY = "Sana"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("SANA_MODEL", {"tooltip": "A Sana-Sprint transformer."}),
            "positive": ("CONDITIONING",),
            "latent": ("LATENT", {"tooltip": ("Empty Sana Latent (its content is not used at denoise 1), or an image "
                                              "encoded with DC-AE Encode for image-to-image.")}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Seeds the initial noise (ComfyUI's) and each step's fresh noise."}),
            "steps": ("INT", {"default": 2, "min": 1, "max": MAX_STEPS}),
            "guidance": ("FLOAT", {"default": 4.5, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                                   "tooltip": "Guidance embedding fed to the model, not CFG (one model call a step)."}),
            "intermediate_timestep": ("FLOAT", {"default": 1.3, **TIME_INPUT,
                                                "tooltip": "TrigFlow time of the second step; used for 2 steps only."}),
            "max_timestep": ("FLOAT", {"default": MAX_TRIGFLOW_TIME, **TIME_INPUT,
                                       "tooltip": "TrigFlow time of the first step (pi/2 = pure noise)."}),
        }, "optional": {"denoise": DENOISE_INPUT}}

    def sample(self, model, positive, latent, seed, steps, guidance, intermediate_timestep, max_timestep, denoise=1.0):
        validate_sprint_sampling(steps, guidance, max_timestep, intermediate_timestep, denoise)
        check_sprint_model(model.module)
        refuse_controls(positive, "Sana-Sprint Sampler")
        check_sana_latent(latent["samples"], model.module.config.in_channels)
        # No CFG: one batch per step, never an uncond half.
        transformer = model.load(sana_memory_estimate(model.module, latent["samples"].shape, False))
        callback = bridge.step_callback(steps, principal_components_image)
        with torch.inference_mode():
            samples = sample_sana_sprint(transformer, latent, positive, seed, steps, guidance, max_timestep,
                                         intermediate_timestep, callback, model.info.get("speed"), denoise)
        return ({"samples": samples.to(bridge.intermediate_device())},)


NODE_CLASS_MAPPINGS = {"SanaSprintSampler": SanaSprintSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"SanaSprintSampler": "Sana-Sprint Sampler"}
