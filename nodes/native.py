"""MODEL adapters: a loaded Sana or Wan transformer as ComfyUI's own MODEL, for its KSampler, SamplerCustomAdvanced,
ModelSamplingSD3 and the other nodes that patch a MODEL at the sampling level (CFG / guidance patches, schedulers)."""

from __future__ import annotations

from .. import comfy_bridge as bridge
from ..samplers.native import native_spec

_DESCRIPTION = (
    "Exposes the loaded {family} transformer (same weights, nothing copied) as ComfyUI's MODEL, so the core KSampler, "
    "SamplerCustomAdvanced, ModelSamplingSD3 (shift; default {shifts}) and other model patch nodes drive it. "
    "LoRAs and memory options applied before this node carry over. Patches that replace the internals of ComfyUI's "
    "own model implementations (attention patches, block replacements) do not apply. ComfyUI only.")


class _ModelToNative:
    CATEGORY = "advanced/model"
    FUNCTION = "convert"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("ComfyUI's MODEL: flow model, LATENT holds raw VAE latents as for the core nodes.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (cls.INPUT_TYPE, {"tooltip": "From the transformer loader (or a LoRA / "
                                                                   "memory options node after it)."})}}

    def convert(self, model):
        return (bridge.native_model(model, native_spec(model.module, model.info)),)


class SanaModelToMODEL(_ModelToNative):
    INPUT_TYPE = "SANA_MODEL"
    DESCRIPTION = _DESCRIPTION.format(family="Sana", shifts="3.0, 6.0 for 4K") + " Not for Sana-Sprint models."


class WanModelToMODEL(_ModelToNative):
    INPUT_TYPE = "WAN_MODEL"
    DESCRIPTION = _DESCRIPTION.format(family="Wan2.1 (text-, image- and first-last-frame-to-video)",
                                      shifts="8.0 for 1.3B, 5.0 for 14B, 16.0 for FLF2V")


NODE_CLASS_MAPPINGS = {"SanaModelToMODEL": SanaModelToMODEL, "WanModelToMODEL": WanModelToMODEL}
NODE_DISPLAY_NAME_MAPPINGS = {"SanaModelToMODEL": "Sana Model to MODEL", "WanModelToMODEL": "Wan Model to MODEL"}
