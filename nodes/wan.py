"""Wan2.1 transformer nodes: load a checkpoint, sample a video latent."""

from __future__ import annotations

import torch

from .. import comfy_bridge as bridge
from ..loaders.wan_transformer import EXPERTS, load_wan_transformer
from ..samplers.loop import validate_sampling
from ..samplers.preview import principal_components_image
from ..samplers.schedulers import SCHEDULES, SOLVERS
from ..samplers.wan import batch_cond_uncond, check_wan_latent, sample_wan, wan_memory_estimate
from ..samplers.wan_experts import LowNoiseExpert, check_boundary, check_pair
from .options import (
    DENOISE_INPUT, SEED_INPUT, SIGMAS_INPUT, cfg_input, guidance_input, loader_inputs, resolve_load,
)

FOLDERS = ("diffusion_models",)


EXPERT_INPUT = (list(EXPERTS), {"default": "high_noise", "tooltip": (
    "For a folder holding both Wan2.2 A14B experts (a -Diffusers pipeline's transformer / transformer_2, Wan-AI's "
    "high_noise_model / low_noise_model): which one to load. Files hold one model and ignore it.")})


class WanTransformerLoader:
    DESCRIPTION = ("Loads a Wan2.1 or Wan2.2 transformer: Comfy-Org repackaged files (fp16/bf16/fp8 scaled), the "
                   "original Wan-AI release, a diffusers folder or a GGUF quantisation (city96's Q8_0 ... Q4_K, kept "
                   "quantized in memory). 1.3B, 14B, VACE, Fun-Camera, Wan2.2 A14B experts and TI2V-5B are recognised "
                   "from the weights; load the two A14B experts with two loaders.")
    CATEGORY = "Wan"
    FUNCTION = "load"
    RETURN_TYPES = ("WAN_MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        inputs = loader_inputs(FOLDERS, "models/diffusion_models (or models/unet)")
        inputs["optional"]["expert"] = EXPERT_INPUT
        return inputs

    def load(self, model_name, dtype, weight_storage="default", expert="high_noise"):
        path, weight_dtype, storage = resolve_load(FOLDERS, model_name, dtype, weight_storage, "diffusion",
                                                  [torch.bfloat16, torch.float16, torch.float32])
        transformer, variant = load_wan_transformer(path, weight_dtype, storage, expert)
        return (bridge.ModelHandle(transformer, "diffusion", family="wan", variant=variant),)


TWO_EXPERT_INPUTS = {
    "model_2": ("WAN_MODEL", {"tooltip": (
        "Wan2.2 A14B: the low-noise expert (model is then the high-noise one). It takes over below the boundary; "
        "one expert is on the device at a time.")}),
    "boundary": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.999, "step": 0.005, "tooltip": (
        "With model_2: the high-noise expert runs while the timestep is at least boundary x 1000 (diffusers' "
        "boundary_ratio); 0 = the model's default (T2V 0.875, I2V 0.9).")}),
    "cfg_2": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": (
        "With model_2: the low-noise expert's CFG scale (diffusers' guidance_scale_2); 0 = the same as cfg. "
        "Wan2.2's own: T2V cfg 4 / cfg_2 3, I2V 3.5 / 3.5.")}),
}


class WanSampler:
    DESCRIPTION = ("Samples a Wan video latent with classifier-free guidance or the connected guidance method "
                   "(denoise < 1 for video-to-video); with model_2, Wan2.2 A14B's two experts in one run.")
    CATEGORY = "Wan"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("WAN_MODEL",),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent": ("LATENT", {"tooltip": "Empty Wan Latent Video, or encoded frames for video-to-video."}),
            "seed": SEED_INPUT,
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000}),
            "cfg": cfg_input(6.0),
            "shift": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                "tooltip": ("Flow shift; 0 = the model's default: 8.0 for 1.3B, 5.0 for 14B, for "
                                            "image-to-video 3.0 up to 832x480 and 5.0 above, 16.0 for "
                                            "first-last-frame.")}),
            "solver": (list(SOLVERS), {"default": "flow_unipc",
                                       "tooltip": ("flow_unipc (bh2) is Wan's own solver; flow_euler, flow_heun (2 "
                                                   "model calls a step) and flow_dpmpp_2m are the others.")}),
            "schedule": (list(SCHEDULES), {"default": "default", "tooltip": (
                "default: the solver's spacing, as the diffusers pipeline; simple: ComfyUI's simple scheduler "
                "(flow_euler), equal to the native KSampler(euler, simple).")}),
            "denoise": DENOISE_INPUT,
        }, "optional": {"guidance": guidance_input("CFG, CFG-Zero*, APG, Skip Layer"), "sigmas": SIGMAS_INPUT,
                        **TWO_EXPERT_INPUTS}}

    def sample(self, model, positive, negative, latent, seed, steps, cfg, shift, solver, schedule, denoise,
               guidance=None, sigmas=None, model_2=None, boundary=0.0, cfg_2=0.0):
        height, width = (8 * side for side in latent["samples"].shape[-2:])
        experts = model.info["variant"].experts if model_2 is not None else None
        shift = shift or (experts.shift if experts else model.info["variant"].shift_for(width, height))
        validate_sampling(steps, cfg, denoise, shift)
        check_wan_latent(latent["samples"], model.module.config.out_channels)
        one_pass = wan_memory_estimate(model.module, latent["samples"].shape)
        device = model.patcher.load_device
        batched = batch_cond_uncond(device, model.patcher.model_size(), one_pass, bridge.total_memory(device))
        memory = 2 * one_pass if batched else one_pass
        low_noise = _low_noise_expert(model, model_2, boundary, cfg_2 or cfg, memory)
        transformer = model.load(memory)
        callback = bridge.step_callback(steps, principal_components_image)
        with torch.inference_mode():
            samples = sample_wan(transformer, latent, positive, negative, seed, steps, cfg, shift, solver, schedule,
                                 denoise, callback, guidance, sigmas, batched, model.info.get("speed"), low_noise)
        return ({"samples": samples.to(bridge.intermediate_device())},)


def _low_noise_expert(model, model_2, boundary: float, cfg_2: float, memory: int) -> LowNoiseExpert | None:
    """The second expert of a Wan2.2 A14B run, or None without model_2; ValueError for a pair that cannot run."""
    if model_2 is None:
        return None
    experts = model.info["variant"].experts
    if experts is None and not boundary:
        raise ValueError(f"{model.info['variant'].name} is not a Wan2.2 A14B expert, so it has no default boundary: "
                         "set boundary, or leave model_2 unconnected.")
    boundary = boundary or experts.boundary_ratio
    check_boundary(boundary)
    check_pair(model.module, model_2.module)
    return LowNoiseExpert(lambda: bridge.hand_over(model, model_2, memory), boundary, cfg_2,
                          model_2.info.get("speed"))


NODE_CLASS_MAPPINGS = {"WanTransformerLoader": WanTransformerLoader, "WanSampler": WanSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"WanTransformerLoader": "Load Wan Transformer (2.1 / 2.2)", "WanSampler": "Wan Sampler"}
