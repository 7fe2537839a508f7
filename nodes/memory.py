"""Memory option nodes: where a loaded model's weights live while it runs, set on a clone of its handle.

How the weights are stored (fp8 / bf16) is chosen when loading (the loaders' weight_storage input). These nodes
choose where they go: text encoders can run on the CPU, and any model can be given a cap on the weights ComfyUI puts
on the GPU; the other layers stay in RAM and are copied to the GPU layer by layer for each call, ComfyUI's own
partial loading (--lowvram) with a budget. Left at their defaults the nodes change nothing.
"""

from __future__ import annotations

import math

from .. import comfy_bridge as bridge
from .checks import declared_problems, verdict

GPU_WEIGHTS_INPUT = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.1, "tooltip": (
    "Most GB of this model's weights kept on the GPU; the other layers stay in RAM and are copied in for each call "
    "(slower, less VRAM). 0 = ComfyUI decides: the whole model when it fits, else as much as fits.")})
DEVICE_INPUT = (["default", "cpu"], {"default": "default", "tooltip": (
    "cpu: encode prompts on the CPU (no VRAM; slower, and slow in fp16: pick dtype bf16 or fp32 in the loader). "
    "default: where ComfyUI puts text encoders.")})


def _weight_budget(max_gpu_weights_gb: float) -> int | None:
    """Bytes of the cap, None for no cap."""
    if not (math.isfinite(max_gpu_weights_gb) and max_gpu_weights_gb >= 0):
        raise ValueError(f"max_gpu_weights_gb must be 0 (no cap) or a positive number of GB, got {max_gpu_weights_gb}.")
    return None if max_gpu_weights_gb == 0 else int(max_gpu_weights_gb * 2**30)


def _validate(node_class, **values) -> bool | str:
    """VALIDATE_INPUTS of both kinds of node: every problem, each naming its input; a linked input (None) is checked
    when the node runs."""
    problems = {}
    gb = values["max_gpu_weights_gb"]
    if isinstance(gb, (int, float)):
        try:
            _weight_budget(gb)
        except ValueError as e:
            problems["max_gpu_weights_gb"] = str(e)
    return verdict({**declared_problems(node_class, values), **problems}.values())


class _ModelMemoryOptions:
    DESCRIPTION = ("Caps the GB of this model's weights ComfyUI keeps on the GPU; the other layers are copied in "
                   "layer by layer for each step (ComfyUI's partial loading, as --lowvram). 0 changes nothing.")
    CATEGORY = "advanced/memory"
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (cls.RETURN_TYPES[0],), "max_gpu_weights_gb": GPU_WEIGHTS_INPUT}}

    @classmethod
    def VALIDATE_INPUTS(cls, max_gpu_weights_gb):
        return _validate(cls, max_gpu_weights_gb=max_gpu_weights_gb)

    def apply(self, model, max_gpu_weights_gb):
        return (bridge.with_memory_options(model, weight_budget=_weight_budget(max_gpu_weights_gb)),)


class SanaModelMemoryOptions(_ModelMemoryOptions):
    RETURN_TYPES = ("SANA_MODEL",)


class WanModelMemoryOptions(_ModelMemoryOptions):
    RETURN_TYPES = ("WAN_MODEL",)


class _TextEncoderMemoryOptions:
    DESCRIPTION = ("Runs this text encoder on the CPU (no VRAM for it at all), and / or caps the GB of its weights "
                   "kept on the GPU. The defaults change nothing.")
    CATEGORY = "advanced/memory"
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text_encoder": (cls.RETURN_TYPES[0],), "device": DEVICE_INPUT,
                             "max_gpu_weights_gb": GPU_WEIGHTS_INPUT}}

    @classmethod
    def VALIDATE_INPUTS(cls, device, max_gpu_weights_gb):
        return _validate(cls, device=device, max_gpu_weights_gb=max_gpu_weights_gb)

    def apply(self, text_encoder, device, max_gpu_weights_gb):
        return (bridge.with_memory_options(text_encoder, load_on_cpu=device == "cpu",
                                           weight_budget=_weight_budget(max_gpu_weights_gb)),)


class SanaTextEncoderMemoryOptions(_TextEncoderMemoryOptions):
    RETURN_TYPES = ("SANA_TEXT_ENCODER",)


class WanTextEncoderMemoryOptions(_TextEncoderMemoryOptions):
    RETURN_TYPES = ("WAN_TEXT_ENCODER",)


NODE_CLASS_MAPPINGS = {
    "SanaModelMemoryOptions": SanaModelMemoryOptions, "WanModelMemoryOptions": WanModelMemoryOptions,
    "SanaTextEncoderMemoryOptions": SanaTextEncoderMemoryOptions,
    "WanTextEncoderMemoryOptions": WanTextEncoderMemoryOptions,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SanaModelMemoryOptions": "Sana Model Memory Options", "WanModelMemoryOptions": "Wan Model Memory Options",
    "SanaTextEncoderMemoryOptions": "Sana Text Encoder Memory Options (Gemma-2)",
    "WanTextEncoderMemoryOptions": "Wan Text Encoder Memory Options (UMT5)",
}
