"""Wan Camera Image to Video: the conditioning of a Wan2.1 Fun-Camera video (camera path, start image, CLIP
features), as ComfyUI's native WanCameraImageToVideo sets it, so either node's output samples with either sampler."""

from __future__ import annotations

import torch

from .. import comfy_bridge as bridge
from ..controlnet.wan_camera_image import (
    camera_latent_shape, camera_video_conditioning, check_camera_video_inputs, start_image_conditioning,
)
from .checks import refuse, verdict
from .latent import wan_conditioning_inputs, wan_video_problems


class WanCameraImageToVideoConditioning:
    DESCRIPTION = ("Wan2.1 Fun-Camera (load a Fun-Camera transformer): the camera path (Wan Camera Preset / "
                   "Keyframes / Pose File, or native WanCameraEmbedding), an optional start image and its CLIP "
                   "features, exactly as ComfyUI's WanCameraImageToVideo. Sample the latent output.")
    CATEGORY = "Wan/camera"
    FUNCTION = "apply"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("The prompt with the camera path and start image.", "The negative prompt with the same.",
                       "An empty latent of the video's size.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **wan_conditioning_inputs(),
        }, "optional": {
            "clip_vision_output": ("CLIP_VISION_OUTPUT", {"tooltip": "CLIP Vision Encode of the start image."}),
            "start_image": ("IMAGE", {"tooltip": "The first frame(s); fitted to the frame (centre crop)."}),
            "camera_conditions": ("WAN_CAMERA_EMBEDDING", {"tooltip": "The camera path, of the same size and length."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None, length=None, batch_size=None):
        return verdict(wan_video_problems(cls, width, height, length, batch_size))

    def apply(self, positive, negative, vae, width, height, length, batch_size, clip_vision_output=None,
              start_image=None, camera_conditions=None):
        refuse(wan_video_problems(self, width, height, length, batch_size))
        check_camera_video_inputs(width, height, length, start_image, camera_conditions)
        concat = None
        if start_image is not None:
            with torch.inference_mode():
                concat = start_image_conditioning(vae.load(), width, height, length, start_image)
        shape = camera_latent_shape(batch_size, width, height, length)
        latent = torch.zeros(shape, device=bridge.intermediate_device())
        return (camera_video_conditioning(positive, concat, clip_vision_output, camera_conditions),
                camera_video_conditioning(negative, concat, clip_vision_output, camera_conditions), {"samples": latent})


NODE_CLASS_MAPPINGS = {"WanCameraImageToVideoConditioning": WanCameraImageToVideoConditioning}
NODE_DISPLAY_NAME_MAPPINGS = {"WanCameraImageToVideoConditioning": "Wan Camera Image to Video"}
