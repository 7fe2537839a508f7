"""Speed option nodes: a model handle that samples with an attention backend, step caching or torch.compile.

The options travel in the handle's info (`model.clone(speed=...)`) and the samplers apply them for their run only
(samplers.speed), so the loader's handle, shared with other branches of the graph, keeps running as before.
"""

from __future__ import annotations

from .. import comfy_bridge as bridge
from ..samplers.speed import SpeedOptions, attention_choices, check_speed

THRESHOLD_INPUT = ("FLOAT", {"default": 0.1, "min": 0.0, "max": 2.0, "step": 0.01, "tooltip": (
    "Higher skips more steps: faster, less faithful; 0 never skips. Typical values: first_block 0.05-0.2; mag "
    "0.06-0.24 (its authors use 0.12 for Wan 1.3B, 0.24 for 14B); sea 0.1-0.3 (diffusers' default 0.25).")})
COMPILE_INPUT = ("BOOLEAN", {"default": False, "tooltip": (
    "torch.compile each transformer block. The first run compiles (a minute or more; needs Triton on a GPU, a C++ "
    "compiler on CPU), later runs of the same size are faster; a new size or batch compiles again.")})
CACHE_TOOLTIP = (
    "Step caching: on steps where the result barely changes, reuse the previous step's residual instead of running "
    "the blocks (faster, some loss of detail). first_block: First Block Cache (TeaCache-style), runs the first block "
    "and skips the rest when its output moved less than the threshold. ")


def _options(model, family: str, attention, cache, threshold, compile) -> tuple:
    options = SpeedOptions(attention, cache, threshold, compile)
    check_speed(options, model.module, family, model.patcher.load_device)
    return (model.clone(speed=options),)


class SanaSpeedOptions:
    DESCRIPTION = ("Samples this Sana model faster: attention kernel, step caching, torch.compile. The defaults change "
                   "nothing.")
    CATEGORY = "Sana"
    FUNCTION = "apply"
    RETURN_TYPES = ("SANA_MODEL",)
    OUTPUT_TOOLTIPS = ("The same weights, sampled with these options by the Sana and Sana-Sprint samplers.",)

    @classmethod
    def INPUT_TYPES(cls):
        device, _ = bridge.devices("diffusion")
        return {"required": {
            "model": ("SANA_MODEL",),
            "attention": (attention_choices("sana", device), {"default": "default", "tooltip": (
                "PyTorch's attention kernel for Sana's cross-attention to the prompt. Sana's self-attention is linear "
                "attention, which no backend changes, so the gain is small. native lets PyTorch pick; _native_math "
                "is the reference kernel; the other _native_ kernels are fused GPU kernels. Only the ones that run "
                "here are listed.")}),
            "cache": (["none", "first_block"], {"default": "none", "tooltip": CACHE_TOOLTIP + (
                "Not with ControlNet, nor with Sana-Sprint (1-4 steps).")}),
            "threshold": THRESHOLD_INPUT,
            "compile": COMPILE_INPUT,
        }}

    def apply(self, model, attention, cache, threshold, compile):
        return _options(model, "sana", attention, cache, threshold, compile)


class WanSpeedOptions:
    DESCRIPTION = ("Samples this Wan model faster: attention backend, step caching, torch.compile. The defaults change "
                   "nothing.")
    CATEGORY = "Wan"
    FUNCTION = "apply"
    RETURN_TYPES = ("WAN_MODEL",)
    OUTPUT_TOOLTIPS = ("The same weights, sampled with these options by the Wan sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        device, _ = bridge.devices("diffusion")
        return {"required": {
            "model": ("WAN_MODEL",),
            "attention": (attention_choices("wan", device), {"default": "default", "tooltip": (
                "diffusers' attention backend for all of Wan's attention. native lets PyTorch's SDPA pick a kernel, "
                "_native_* pins one (math is the slow reference; flash/efficient/cudnn are fused GPU kernels, mostly "
                "bf16/fp16); flash, sage and xformers are those packages' kernels (sage quantises to 8 bits: faster, "
                "slightly different videos). Only the ones that run here are listed.")}),
            "cache": (["none", "first_block", "mag", "sea"], {"default": "none", "tooltip": CACHE_TOOLTIP + (
                "mag: MagCache, skips by the model's calibrated magnitude curve (Wan2.1 T2V 1.3B and 14B). sea: "
                "SeaCache, skips while a spectrum-filtered view of the input moved less than the threshold.")}),
            "threshold": THRESHOLD_INPUT,
            "compile": COMPILE_INPUT,
        }}

    def apply(self, model, attention, cache, threshold, compile):
        return _options(model, "wan", attention, cache, threshold, compile)


NODE_CLASS_MAPPINGS = {"SanaSpeedOptions": SanaSpeedOptions, "WanSpeedOptions": WanSpeedOptions}
NODE_DISPLAY_NAME_MAPPINGS = {"SanaSpeedOptions": "Sana Speed Options", "WanSpeedOptions": "Wan Speed Options"}
