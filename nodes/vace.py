"""Wan VACE node: control video, masks and reference images -> conditioning and the latent to sample."""

from __future__ import annotations

import torch

from .. import comfy_bridge as bridge
from ..controlnet.wan_vace import attach_vace, build_vace_context, check_vace_inputs, vace_latent
from .checks import refuse, verdict
from .latent import wan_conditioning_inputs, wan_video_problems


class WanVACEConditioning:
    DESCRIPTION = ("Wan2.1 VACE (load a VACE transformer): a control video (depth / pose / edges as frames), masks "
                   "(white = generate, black = keep: inpainting, outpainting, first/last frame) and reference images, "
                   "as diffusers' WanVACEPipeline. Sample the latent output, then Trim Video Latent by trim_latent.")
    CATEGORY = "Wan"
    FUNCTION = "apply"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT", "INT")
    RETURN_NAMES = ("positive", "negative", "latent", "trim_latent")
    OUTPUT_TOOLTIPS = ("The prompt with the VACE context.", "The negative prompt with the same context.",
                       "An empty latent with the reference images' frames in front of the video's.",
                       "Latent frames of the reference images: trim them after sampling (Trim Video Latent).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **wan_conditioning_inputs(),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "Scale of every VACE block's hint (diffusers' conditioning_scale)."}),
        }, "optional": {
            "control_video": ("IMAGE", {"tooltip": "length frames of width x height; none = mid-grey frames."}),
            "control_masks": ("MASK", {"tooltip": "One mask per frame; 1 generates, 0 keeps the control video."}),
            "reference_image": ("IMAGE", {"tooltip": "One or more images (a batch) the video should show; fitted "
                                                     "inside the frame on white."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None, length=None, batch_size=None):
        return verdict(wan_video_problems(cls, width, height, length, batch_size))

    def apply(self, positive, negative, vae, width, height, length, batch_size, strength, control_video=None,
              control_masks=None, reference_image=None):
        refuse(wan_video_problems(self, width, height, length, batch_size))
        check_vace_inputs(width, height, length, control_video, control_masks, reference_image)
        model = vae.load()
        with torch.inference_mode():
            context = build_vace_context(model, width, height, length, control_video, control_masks, reference_image,
                                         strength)
        latent = vace_latent(context, batch_size).to(bridge.intermediate_device())
        return attach_vace(positive, context), attach_vace(negative, context), {"samples": latent}, \
            context.reference_frames


NODE_CLASS_MAPPINGS = {"WanVACEConditioning": WanVACEConditioning}
NODE_DISPLAY_NAME_MAPPINGS = {"WanVACEConditioning": "Wan VACE Conditioning"}
