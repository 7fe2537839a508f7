"""Sana ControlNet nodes: load a ControlNet, attach it with a control image to the conditioning."""

from __future__ import annotations

import torch

from .. import comfy_bridge as bridge
from ..controlnet.sana import (
    SanaControl, attach_control, check_control_settings, check_controlnet_module, control_memory_estimate,
    control_settings_problems, controls_of,
)
from ..loaders.sana_controlnet import load_sana_controlnet
from ..vae.dcae import encode_dcae
from .checks import declared_problems, verdict
from .options import DTYPE_INPUT, model_choices, resolve_dtype, resolve_model
from .progress import unit_progress

FOLDERS = ("controlnet",)


def load_with_controlnets(model, positive, negative, latent_shape, memory_required: int):
    """The transformer on its device, loaded in one call with the ControlNets the conditioning carries, so ComfyUI
    makes room for all of them at once; returns the transformer module."""
    controls = (*controls_of(positive), *controls_of(negative))
    handles = list({id(c.controlnet): c.controlnet for c in controls}.values())
    memory_required += control_memory_estimate(controls, latent_shape, guided=True)
    bridge.load_models([model.patcher, *(h.patcher for h in handles)], memory_required)
    return model.module


class SanaControlNetLoader:
    DESCRIPTION = ("Loads a Sana ControlNet: the original NVlabs .pth / .safetensors (e.g. "
                   "Sana_1600M_1024px_BF16_ControlNet_HED.pth) or a diffusers folder / single file.")
    CATEGORY = "Sana"
    FUNCTION = "load"
    RETURN_TYPES = ("SANA_CONTROLNET",)
    OUTPUT_TOOLTIPS = ("The ControlNet, for Apply Sana ControlNet.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "controlnet_name": (model_choices(*FOLDERS), {"tooltip": "From models/controlnet."}),
            "dtype": DTYPE_INPUT,
        }}

    def load(self, controlnet_name, dtype):
        path = resolve_model(FOLDERS, controlnet_name)
        weight_dtype = resolve_dtype(dtype, "diffusion", [torch.bfloat16, torch.float16, torch.float32])
        controlnet, name = load_sana_controlnet(path, weight_dtype)
        return (bridge.ModelHandle(controlnet, "diffusion", family="sana", name=name),)


class ApplySanaControlNet:
    DESCRIPTION = ("Attaches a Sana ControlNet and its control image (e.g. an edge map; encoded with the DC-AE) to "
                   "both prompts, for the Sana Sampler. Chain several to combine ControlNets.")
    CATEGORY = "Sana"
    FUNCTION = "apply"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")

    @classmethod
    def INPUT_TYPES(cls):
        percent = {"min": 0.0, "max": 1.0, "step": 0.001}
        return {"required": {
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "controlnet": ("SANA_CONTROLNET",),
            "vae": ("DCAE_VAE", {"tooltip": "Encodes the control image, as the ControlNet was trained."}),
            "image": ("IMAGE", {"tooltip": "The control image, the size of the latent it will steer."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "Multiplies the ControlNet's outputs; 0 returns the prompts unchanged."}),
            "start_percent": ("FLOAT", {"default": 0.0, **percent,
                                        "tooltip": "Where in the run the control starts (ComfyUI's ControlNet percent)."}),
            "end_percent": ("FLOAT", {"default": 1.0, **percent, "tooltip": "Where in the run the control stops."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, start_percent, end_percent):
        """Every problem at queue time; linked inputs (None) are checked when the node runs."""
        problems = declared_problems(cls, {"start_percent": start_percent, "end_percent": end_percent})
        if not problems and None not in (start_percent, end_percent):
            return verdict(control_settings_problems(1.0, start_percent, end_percent))
        return verdict(problems.values())

    def apply(self, positive, negative, controlnet, vae, image, strength, start_percent, end_percent):
        check_control_settings(strength, start_percent, end_percent)
        check_controlnet_module(controlnet.module)
        if strength == 0:
            return (positive, negative)
        model = vae.load()
        channels, expected = model.config.latent_channels, controlnet.module.config.in_channels
        if channels != expected:
            raise ValueError(f"This VAE makes {channels}-channel latents, the ControlNet takes {expected}: use Sana's "
                             f"DC-AE.")
        with torch.inference_mode():
            latent = encode_dcae(model, image, progress=unit_progress()[0]) * model.config.scaling_factor
        control = SanaControl(controlnet, latent, (image.shape[2], image.shape[1]), strength, start_percent,
                              end_percent)
        return (attach_control(positive, control), attach_control(negative, control))


NODE_CLASS_MAPPINGS = {"SanaControlNetLoader": SanaControlNetLoader, "ApplySanaControlNet": ApplySanaControlNet}
NODE_DISPLAY_NAME_MAPPINGS = {"SanaControlNetLoader": "Load Sana ControlNet",
                              "ApplySanaControlNet": "Apply Sana ControlNet"}
