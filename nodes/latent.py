"""Latent nodes: empty latents at the sizes each family needs."""

from __future__ import annotations

from .. import comfy_bridge as bridge
from ..samplers.latents import (
    SANA_BINS, SANA_STRIDE, WAN_STRIDE, empty_sana_latent, empty_wan_latent, frame_count_problem, sana_memory_problem,
    size_problem, snap_to_bin, wan_memory_problem,
)
from .checks import declared_problems, refuse, verdict


def _size_problems(problems: dict[str, str], stride: int, **sizes) -> None:
    """Add what is wrong with each known width / height that is within its bounds."""
    for name, value in sizes.items():
        if value is not None and name not in problems:
            problem = size_problem(name, value, stride)
            if problem:
                problems[name] = problem


def _whole_numbers(*values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _memory_available() -> int:
    """Bytes of the device where latents and decoded images wait between nodes."""
    return bridge.total_memory(bridge.intermediate_device())


def wan_video_size_inputs() -> dict:
    """width, height and length of a Wan video, as every Wan video node declares them."""
    return {"width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16}),
            "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16}),
            "length": ("INT", {"default": 81, "min": 1, "max": 1001, "step": 4, "tooltip": "Frames, 4n+1."})}


def wan_conditioning_inputs() -> dict:
    """The required inputs every Wan conditioning node that makes the latent to sample starts with."""
    return {
        "positive": ("CONDITIONING",),
        "negative": ("CONDITIONING",),
        "vae": ("WAN_VAE",),
        **wan_video_size_inputs(),
        "batch_size": ("INT", {"default": 1, "min": 1, "max": 64}),
    }


def wan_video_problems(node_class, width, height, length, batch_size) -> list[str]:
    """Every problem with a Wan video size, each naming its input; the memory it needs once all inputs are known and
    fine (None = a linked input, checked when the node runs)."""
    problems = declared_problems(node_class, {"width": width, "height": height, "length": length,
                                              "batch_size": batch_size})
    _size_problems(problems, WAN_STRIDE, width=width, height=height)
    length_problem = frame_count_problem(length) if length is not None and "length" not in problems else None
    if length_problem:
        problems["length"] = length_problem
    if not problems and _whole_numbers(width, height, length, batch_size):
        memory = wan_memory_problem(width, height, length, batch_size, _memory_available())
        if memory:
            problems["memory"] = memory
    return list(problems.values())


class EmptySanaLatent:
    DESCRIPTION = "An empty 32-channel DC-AE latent ([B, 32, H/32, W/32]) for Sana text-to-image."
    CATEGORY = "Sana"
    FUNCTION = "generate"
    RETURN_TYPES = ("LATENT", "INT", "INT")
    RETURN_NAMES = ("latent", "width", "height")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 1024, "min": 32, "max": 8192, "step": 32}),
            "height": ("INT", {"default": 1024, "min": 32, "max": 8192, "step": 32}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64}),
            "resolution_bin": (["off", *SANA_BINS], {
                "default": "off",
                "tooltip": "Snap to the trained size with the nearest aspect ratio: 512, 1024, 2K or 4K models."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width, height, batch_size, resolution_bin):
        """Refuse a size the DC-AE cannot produce, or one that does not fit in memory, at queue time (HTTP 400)."""
        return verdict(cls.problems(width, height, batch_size, resolution_bin))

    @classmethod
    def problems(cls, width, height, batch_size, resolution_bin) -> list[str]:
        """Every problem, each naming its input (None = a linked input, checked when the node runs)."""
        problems = declared_problems(cls, {"width": width, "height": height, "batch_size": batch_size,
                                           "resolution_bin": resolution_bin})
        _size_problems(problems, SANA_STRIDE, width=width, height=height)
        if not problems and _whole_numbers(width, height, batch_size) and resolution_bin is not None:
            if resolution_bin != "off":
                width, height = snap_to_bin(width, height, resolution_bin)
            memory = sana_memory_problem(width, height, batch_size, _memory_available())
            if memory:
                problems["memory"] = memory
        return list(problems.values())

    def generate(self, width, height, batch_size, resolution_bin):
        refuse(self.problems(width, height, batch_size, resolution_bin))
        if resolution_bin != "off":
            width, height = snap_to_bin(width, height, resolution_bin)
        samples = empty_sana_latent(width, height, batch_size).to(bridge.intermediate_device())
        return ({"samples": samples}, width, height)


class EmptyWanLatentVideo:
    DESCRIPTION = "An empty Wan2.1 video latent [B, 16, (length-1)/4+1, H/8, W/8]; 832x480 and 81 frames is 5 s at 16 fps."
    CATEGORY = "Wan"
    FUNCTION = "generate"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16}),
            "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16}),
            "length": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 4, "tooltip": "Frames: 4n+1."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 16}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width, height, length, batch_size):
        """Refuse sizes and frame counts the Wan VAE and transformer cannot take, or that do not fit in memory, at
        queue time."""
        return verdict(wan_video_problems(cls, width, height, length, batch_size))

    def generate(self, width, height, length, batch_size):
        refuse(wan_video_problems(self, width, height, length, batch_size))
        return ({"samples": empty_wan_latent(width, height, length, batch_size).to(bridge.intermediate_device())},)


NODE_CLASS_MAPPINGS = {"EmptySanaLatent": EmptySanaLatent, "EmptyWanLatentVideo": EmptyWanLatentVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"EmptySanaLatent": "Empty Sana Latent", "EmptyWanLatentVideo": "Empty Wan Latent Video"}
