"""Guidance nodes: each builds one guidance method (samplers.guidance) for the Sana and Wan samplers' `guidance` input.

A method is a GUIDANCE value rather than a model patch, so one sampler node per family serves every method.
"""

from __future__ import annotations

from ..samplers.guidance import APG, CFG, CFGZeroStar
from ..samplers.perturbed import PAG, SkipLayerGuidance, parse_layers

CATEGORY = "sampling/guidance"
OUTPUT_TOOLTIP = "Connect to the guidance input of a Sana or Wan sampler; it replaces the sampler's cfg."


def _scale(default: float) -> tuple:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                      "tooltip": "Guidance scale: uncond + scale x (cond - uncond); 1.0 is the prompt alone."})


def _range(start: float, end: float, what: str, before: str = "") -> dict:
    return {
        "start_percent": ("FLOAT", {"default": start, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
            f"Fraction of the steps after which {what} starts{before}.")}),
        "end_percent": ("FLOAT", {"default": end, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
            f"Fraction of the steps after which {what} stops; must be above start_percent.")}),
    }


RANGE_INPUTS = _range(0.0, 1.0, "guidance", "; steps before it use the prompt alone (faster)")


class _GuidanceNode:
    """What every guidance node declares: a GUIDANCE output built by `build`."""
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = ("GUIDANCE",)
    OUTPUT_TOOLTIPS = (OUTPUT_TOOLTIP,)


class GuidanceCFG(_GuidanceNode):
    DESCRIPTION = ("Classifier-free guidance, with the optional rescale of Lin et al. 2023 against over-exposure at "
                   "high scales.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scale": _scale(5.0),
            "rescale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
                "Mixes in the guided velocity rescaled to the prompt's standard deviation; 0 is off, 0.7 is the "
                "paper's.")}),
            **RANGE_INPUTS,
        }}

    def build(self, scale, rescale, start_percent, end_percent):
        return (CFG(scale, rescale, start_percent, end_percent),)


class GuidanceCFGZeroStar(_GuidanceNode):
    DESCRIPTION = ("CFG-Zero* (Fan et al. 2025): CFG with an optimised scale of the negative prediction, and a zero "
                   "velocity for the first steps.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scale": _scale(5.0),
            "zero_init_steps": ("INT", {"default": 1, "min": 0, "max": 1000, "step": 1, "tooltip": (
                "The first steps leave the latent unchanged; the paper zeroes about 4% of the steps.")}),
            **RANGE_INPUTS,
        }}

    def build(self, scale, zero_init_steps, start_percent, end_percent):
        return (CFGZeroStar(scale, zero_init_steps, start_percent, end_percent),)


class GuidanceAPG(_GuidanceNode):
    DESCRIPTION = ("Adaptive projected guidance (Sadat et al. 2024): allows high scales without over-saturation by "
                   "damping the part of the guidance parallel to the prediction. Defaults as diffusers'.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scale": _scale(7.5),
            "eta": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01, "tooltip": (
                "Weight of the guidance part parallel to the prediction: 1 keeps it, 0 drops it (the paper's).")}),
            "norm_threshold": ("FLOAT", {"default": 15.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": (
                "Clips the guidance to this norm (per sample); 0 is no clipping.")}),
            "momentum": ("FLOAT", {"default": 0.0, "min": -5.0, "max": 1.0, "step": 0.01, "tooltip": (
                "Running average of the guidance over the steps; 0 is off, the paper uses negative values.")}),
            **RANGE_INPUTS,
        }}

    def build(self, scale, eta, norm_threshold, momentum, start_percent, end_percent):
        return (APG(scale, eta, norm_threshold, momentum, start_percent, end_percent),)


def _cfg(default: float) -> tuple:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                      "tooltip": "Classifier-free guidance scale, on every step; 1.0 runs no negative prompt."})


class GuidancePAG(_GuidanceNode):
    DESCRIPTION = ("Perturbed-attention guidance (Ahn et al. 2024) for Sana: CFG plus guidance away from a forward "
                   "whose self-attention in the chosen blocks is replaced by the identity. As diffusers' "
                   "SanaPAGPipeline.")
    OUTPUT_TOOLTIPS = ("Connect to the guidance input of a Sana sampler; it replaces the sampler's cfg.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scale": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                "tooltip": "PAG scale: weight of (cond - perturbed); 0 is CFG alone."}),
            "layers": ("STRING", {"default": "8", "tooltip": (
                "Blocks whose self-attention is perturbed, e.g. '8' or '7, 8' (0 is the first block; Sana 1600M "
                "has 20).")}),
            "cfg": _cfg(4.5),
            "adaptive_scale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip": (
                "Fades the PAG scale over the run: scale - adaptive_scale x (1000 - timestep), at least 0; 0 is "
                "off.")}),
            **_range(0.0, 1.0, "the perturbation"),
        }}

    def build(self, scale, layers, cfg, adaptive_scale, start_percent, end_percent):
        return (PAG(scale, parse_layers(layers), cfg, adaptive_scale, start_percent, end_percent),)


class GuidanceSkipLayer(_GuidanceNode):
    DESCRIPTION = ("Skip-layer guidance for Wan: CFG plus guidance away from a forward with the chosen blocks "
                   "skipped, on part of the run. As diffusers' SkipLayerGuidance guider.")
    OUTPUT_TOOLTIPS = ("Connect to the guidance input of a Wan sampler; it replaces the sampler's cfg.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scale": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                "tooltip": "Skip-layer scale: weight of (cond - skipped); 0 is CFG alone."}),
            "layers": ("STRING", {"default": "9", "tooltip": (
                "Blocks to skip, e.g. '9' or '9, 10' (0 is the first block; Wan 1.3B has 30, 14B 40).")}),
            "cfg": _cfg(5.0),
            **_range(0.01, 0.2, "skip-layer guidance"),
        }}

    def build(self, scale, layers, cfg, start_percent, end_percent):
        return (SkipLayerGuidance(scale, parse_layers(layers), cfg, start_percent, end_percent),)


NODE_CLASS_MAPPINGS = {"GuidanceCFG": GuidanceCFG, "GuidanceCFGZeroStar": GuidanceCFGZeroStar,
                       "GuidanceAPG": GuidanceAPG, "GuidancePAG": GuidancePAG, "GuidanceSkipLayer": GuidanceSkipLayer}
NODE_DISPLAY_NAME_MAPPINGS = {"GuidanceCFG": "Guidance: CFG", "GuidanceCFGZeroStar": "Guidance: CFG-Zero*",
                              "GuidanceAPG": "Guidance: APG (Adaptive Projected)",
                              "GuidancePAG": "Guidance: PAG (Perturbed Attention, Sana)",
                              "GuidanceSkipLayer": "Guidance: Skip Layer (Wan)"}
