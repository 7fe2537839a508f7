"""Sana-Video nodes: load the transformer, encode prompts, make an image-to-video latent, sample."""

from __future__ import annotations

import torch

from .. import comfy_bridge as bridge
from ..loaders.sana_video_transformer import load_sana_video_transformer
from ..samplers.guidance import pipeline_cfg
from ..samplers.latents import empty_wan_latent
from ..samplers.loop import validate_sampling
from ..samplers.preview import principal_components_image
from ..samplers.sana_video import (
    START_FRAMES, check_sana_video_latent, sample_sana_video, sana_video_memory_estimate,
)
from ..samplers.schedulers import SCHEDULES, SOLVERS
from ..text.sana_video_prompt import DEFAULT_MOTION_SCORE, encode_sana_video_prompt, with_motion_score
from ..vae.start_image import encode_start_image
from .checks import refuse, verdict
from .latent import wan_video_problems
from .options import (
    DENOISE_INPUT, SEED_INPUT, SIGMAS_INPUT, cfg_input, guidance_input, loader_inputs, resolve_load,
)
from .progress import unit_progress
from .text import encode_pair, prompt_batch

FOLDERS = ("diffusion_models",)


class SanaVideoTransformerLoader:
    DESCRIPTION = ("Loads a Sana-Video transformer (SANA-Video 2B 480p): the NVlabs .pth / .safetensors, ComfyUI "
                   "single files or a diffusers folder; it uses the Wan2.1 VAE and Sana's Gemma-2 text encoder.")
    CATEGORY = "Sana-Video"
    FUNCTION = "load"
    RETURN_TYPES = ("SANA_VIDEO_MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return loader_inputs(FOLDERS, "models/diffusion_models (or models/unet)")

    def load(self, model_name, dtype, weight_storage="default"):
        path, weight_dtype, storage = resolve_load(FOLDERS, model_name, dtype, weight_storage, "diffusion",
                                                  [torch.bfloat16, torch.float16, torch.float32])
        transformer, variant = load_sana_video_transformer(path, weight_dtype, storage)
        return (bridge.ModelHandle(transformer, "diffusion", family="sana-video", variant=variant),)


class SanaVideoTextEncode:
    DESCRIPTION = ("Encodes prompts with Sana-Video's recipe (its complex human instruction, 300-token window) on "
                   "the Sana text encoder, ending the prompt with Sana-Video's motion score.")
    CATEGORY = "Sana-Video"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("SANA_TEXT_ENCODER",),
            "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
            "motion_score": ("INT", {"default": DEFAULT_MOTION_SCORE, "min": 0, "max": 100, "tooltip": (
                "Appends ' motion score: N.' to each prompt, as Sana-Video was trained (higher: more motion); "
                "0 leaves the prompt as written.")}),
            "batch_prompts": ("BOOLEAN", {"default": False,
                                          "tooltip": "Each non-empty line of the prompt is one video of the batch."}),
        }}

    def encode(self, text_encoder, prompt, negative_prompt, motion_score, batch_prompts):
        prompts = [with_motion_score(p, motion_score) for p in prompt_batch(prompt, negative_prompt, batch_prompts)]
        return encode_pair(text_encoder, encode_sana_video_prompt, prompts, negative_prompt)


class SanaVideoImageToVideo:
    DESCRIPTION = ("An image-to-video latent for the Sana-Video Sampler: the start image, encoded by the Wan VAE, is "
                   "the first latent frame, kept as it is while the sampler generates the others.")
    CATEGORY = "Sana-Video"
    FUNCTION = "generate"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("WAN_VAE",),
            "start_image": ("IMAGE", {"tooltip": "The first frame (the first image of a batch); resized to width x "
                                                 "height when it has another size."}),
            "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16}),
            "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16}),
            "length": ("INT", {"default": 81, "min": 5, "max": 1025, "step": 4, "tooltip": "Frames: 4n+1."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 16}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width, height, length, batch_size):
        return verdict(wan_video_problems(cls, width, height, length, batch_size))

    def generate(self, vae, start_image, width, height, length, batch_size):
        refuse(wan_video_problems(self, width, height, length, batch_size))
        model = vae.load()
        with torch.inference_mode():
            start = encode_start_image(model, start_image, width, height, progress=unit_progress()[0])
        samples = empty_wan_latent(width, height, length, batch_size)
        samples[:, :, :1] = start
        return ({"samples": samples.to(bridge.intermediate_device()), START_FRAMES: 1},)


class SanaVideoSampler:
    DESCRIPTION = ("Samples a Sana-Video latent (Wan2.1 VAE latents: decode with Wan VAE Decode or ComfyUI's VAE "
                   "Decode): text-to-video from Empty Wan Latent Video, image-to-video from Sana-Video Image to Video.")
    CATEGORY = "Sana-Video"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("SANA_VIDEO_MODEL",),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent": ("LATENT", {"tooltip": "Empty Wan Latent Video for text-to-video, Sana-Video Image to Video for "
                                             "image-to-video."}),
            "seed": SEED_INPUT,
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000}),
            "cfg": cfg_input(6.0),
            "shift": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                "tooltip": "Flow shift; 0 = the model's default (8.0)."}),
            "solver": (list(SOLVERS), {"default": "flow_dpmpp_2m", "tooltip": (
                "flow_dpmpp_2m is SanaVideoPipeline's solver, flow_euler SanaImageToVideoPipeline's; flow_heun (2 "
                "model calls a step) and flow_unipc are the others.")}),
            "schedule": (list(SCHEDULES), {"default": "default", "tooltip": (
                "default: the solver's spacing, as the diffusers pipelines; simple: ComfyUI's simple scheduler.")}),
            "denoise": DENOISE_INPUT,
        }, "optional": {"guidance": guidance_input("CFG, CFG-Zero*, APG"), "sigmas": SIGMAS_INPUT}}

    def sample(self, model, positive, negative, latent, seed, steps, cfg, shift, solver, schedule, denoise,
               guidance=None, sigmas=None):
        shift = shift or model.info["variant"].default_shift
        validate_sampling(steps, cfg, denoise, shift)
        check_sana_video_latent(latent["samples"], model.module.config.in_channels, latent.get(START_FRAMES, 0))
        guidance = guidance if guidance is not None else pipeline_cfg(cfg)
        transformer = model.load(sana_video_memory_estimate(model.module, latent["samples"].shape,
                                                            guidance.uses_uncond))
        callback = bridge.step_callback(steps, principal_components_image)
        with torch.inference_mode():
            samples = sample_sana_video(transformer, latent, positive, negative, seed, steps, cfg, shift, solver,
                                        schedule, denoise, callback, guidance, sigmas)
        return ({"samples": samples.to(bridge.intermediate_device())},)


NODE_CLASS_MAPPINGS = {"SanaVideoTransformerLoader": SanaVideoTransformerLoader,
                       "SanaVideoTextEncode": SanaVideoTextEncode, "SanaVideoImageToVideo": SanaVideoImageToVideo,
                       "SanaVideoSampler": SanaVideoSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"SanaVideoTransformerLoader": "Load Sana-Video Transformer",
                              "SanaVideoTextEncode": "Sana-Video Text Encode",
                              "SanaVideoImageToVideo": "Sana-Video Image to Video",
                              "SanaVideoSampler": "Sana-Video Sampler"}
