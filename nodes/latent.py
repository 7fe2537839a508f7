"""Latent nodes: empty latents at the sizes each family needs."""

from __future__ import annotations

from .. import comfy_bridge as bridge
from ..samplers.latents import (
    SANA_BINS, SANA_STRIDE, WAN_STRIDE, check_frame_count, check_image_size, empty_sana_latent, empty_wan_latent,
    snap_to_bin,
)


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
    def VALIDATE_INPUTS(cls, width, height):
        """Refuse a size the DC-AE cannot produce at queue time (HTTP 400 with this node's error)."""
        if width is None or height is None:  # linked inputs are only known at run time
            return True
        try:
            check_image_size(width, height, SANA_STRIDE)
        except ValueError as e:
            return str(e)
        return True

    def generate(self, width, height, batch_size, resolution_bin):
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
    def VALIDATE_INPUTS(cls, width, height, length):
        """Refuse sizes and frame counts the Wan VAE and transformer cannot take, at queue time."""
        try:
            if width is not None and height is not None:
                check_image_size(width, height, WAN_STRIDE)
            if length is not None:
                check_frame_count(length)
        except ValueError as e:
            return str(e)
        return True

    def generate(self, width, height, length, batch_size):
        return ({"samples": empty_wan_latent(width, height, length, batch_size).to(bridge.intermediate_device())},)


NODE_CLASS_MAPPINGS = {"EmptySanaLatent": EmptySanaLatent, "EmptyWanLatentVideo": EmptyWanLatentVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"EmptySanaLatent": "Empty Sana Latent", "EmptyWanLatentVideo": "Empty Wan Latent Video"}
