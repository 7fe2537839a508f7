"""Sana transformer nodes: load a checkpoint, sample a latent."""

from __future__ import annotations

import torch

from .. import comfy_bridge as bridge
from ..loaders.sana_transformer import load_sana_transformer
from ..samplers.guidance import pipeline_cfg
from ..samplers.loop import validate_sampling
from ..samplers.preview import principal_components_image
from ..samplers.sana import check_sana_latent, sample_sana, sana_memory_estimate
from ..samplers.schedulers import SOLVERS
from .controlnet import load_with_controlnets
from .options import (
    DENOISE_INPUT, SEED_INPUT, SIGMAS_INPUT, cfg_input, guidance_input, loader_inputs, resolve_load,
)

FOLDERS = ("diffusion_models",)


class SanaTransformerLoader:
    DESCRIPTION = ("Loads any Sana transformer: original .pth/.safetensors, ComfyUI single files, diffusers folders, "
                   "GGUF quantisations (kept quantized in memory). "
                   "The variant (600M, 1.6B, 1.5, 2K/4K, Sprint) is recognised from the weights.")
    CATEGORY = "Sana"
    FUNCTION = "load"
    RETURN_TYPES = ("SANA_MODEL",)
    OUTPUT_TOOLTIPS = ("The Sana transformer, managed by ComfyUI's VRAM manager.",)

    @classmethod
    def INPUT_TYPES(cls):
        return loader_inputs(FOLDERS, "models/diffusion_models (or models/unet)")

    def load(self, model_name, dtype, weight_storage="default"):
        path, weight_dtype, storage = resolve_load(FOLDERS, model_name, dtype, weight_storage, "diffusion",
                                                  [torch.bfloat16, torch.float16, torch.float32])
        transformer, variant = load_sana_transformer(path, weight_dtype, storage)
        return (bridge.ModelHandle(transformer, "diffusion", family="sana", variant=variant),)


class SanaSampler:
    DESCRIPTION = "Samples a Sana latent from noise (or from an input latent with denoise < 1) with guidance."
    CATEGORY = "Sana"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("SANA_MODEL",),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent": ("LATENT", {"tooltip": "Empty Sana Latent for text-to-image, or an encoded image."}),
            "seed": SEED_INPUT,
            "steps": ("INT", {"default": 20, "min": 1, "max": 1000}),
            "cfg": cfg_input(4.5),
            "shift": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                "tooltip": "Flow shift; 0 = the model's default (3.0, 6.0 for 4K)."}),
            "solver": (list(SOLVERS), {"default": "flow_dpmpp_2m",
                                       "tooltip": ("flow_dpmpp_2m is Sana's own Flow-DPM-Solver; flow_euler, flow_heun "
                                                   "(2 model calls a step) and flow_unipc are the others.")}),
            "denoise": DENOISE_INPUT,
        }, "optional": {"guidance": guidance_input("CFG, CFG-Zero*, APG, PAG"), "sigmas": SIGMAS_INPUT}}

    def sample(self, model, positive, negative, latent, seed, steps, cfg, shift, solver, denoise, guidance=None,
               sigmas=None):
        shift = shift or model.info["variant"].default_shift
        validate_sampling(steps, cfg, denoise, shift)
        check_sana_latent(latent["samples"], model.module.config.in_channels)
        guidance = guidance if guidance is not None else pipeline_cfg(cfg)
        memory = sana_memory_estimate(model.module, latent["samples"].shape, guidance.uses_uncond)
        transformer = load_with_controlnets(model, positive, negative, latent["samples"].shape, memory)
        callback = bridge.step_callback(steps, principal_components_image)
        with torch.inference_mode():
            samples = sample_sana(transformer, latent, positive, negative, seed, steps, cfg, shift, solver, denoise,
                                  callback, guidance, sigmas, model.info.get("speed"))
        return ({"samples": samples.to(bridge.intermediate_device())},)


NODE_CLASS_MAPPINGS = {"SanaTransformerLoader": SanaTransformerLoader, "SanaSampler": SanaSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"SanaTransformerLoader": "Load Sana Transformer", "SanaSampler": "Sana Sampler"}
