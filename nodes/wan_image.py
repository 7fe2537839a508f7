"""Wan2.1 image-to-video nodes: load and run the CLIP image encoder, condition a video on a start (and end) image."""

from __future__ import annotations

import torch

from .. import comfy_bridge as bridge
from ..loaders.clip_vision import load_clip_vision
from ..samplers.wan_image import (
    CLIP_OUTPUT, CONCAT_LATENT, CONCAT_MASK, attach_image, build_image_conditioning, check_image_to_video_inputs,
)
from ..samplers.latents import WAN_LATENT_CHANNELS
from ..vision.clip import CROPS, encode_clip_vision, joined_clip_outputs
from .checks import refuse, verdict
from .latent import wan_conditioning_inputs, wan_video_problems
from .options import DTYPE_INPUT, model_choices, resolve_dtype, resolve_model
from .progress import unit_progress

FOLDERS = ("clip_vision",)


class WanCLIPVisionLoader:
    DESCRIPTION = ("Loads the CLIP image encoder of Wan2.1 image-to-video: Comfy-Org's clip_vision_h.safetensors, "
                   "Wan-AI's models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth (its image tower), an open_clip "
                   "file or a diffusers image_encoder folder.")
    CATEGORY = "Wan"
    FUNCTION = "load"
    RETURN_TYPES = ("WAN_CLIP_VISION",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (model_choices(*FOLDERS), {"tooltip": "From models/clip_vision."}),
                             "dtype": DTYPE_INPUT}}

    def load(self, clip_name, dtype):
        path = resolve_model(FOLDERS, clip_name)
        model = load_clip_vision(path, resolve_dtype(dtype, "text_encoder", [torch.float16, torch.float32]))
        return (bridge.ModelHandle(model, "text_encoder", family="clip_vision"),)


class WanCLIPVisionEncode:
    DESCRIPTION = ("CLIP features of an image for Wan image-to-video, exactly as ComfyUI's CLIP Vision Encode makes "
                   "them; the output also feeds ComfyUI's native Wan nodes.")
    CATEGORY = "Wan"
    FUNCTION = "encode"
    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_vision": ("WAN_CLIP_VISION",),
            "image": ("IMAGE",),
            "crop": (list(CROPS), {"default": "center", "tooltip": (
                "center: scale the short side to 224 and keep the middle (as ComfyUI and diffusers); none: squash the "
                "whole image to a square (as the original Wan code).")}),
        }}

    def encode(self, clip_vision, image, crop):
        model = clip_vision.load()
        with torch.inference_mode():
            return (encode_clip_vision(model, image, crop),)


class WanImageToVideoConditioning:
    DESCRIPTION = ("Wan2.1 image-to-video (I2V) and first-last-frame (FLF2V): the start image (and an end image) as "
                   "the video's first (and last) frames, with their CLIP features, as diffusers' "
                   "WanImageToVideoPipeline. Images of another size are cropped to the video's aspect ratio and "
                   "resized, as ComfyUI's WanImageToVideo. The conditioning also works with the core KSampler.")
    CATEGORY = "Wan"
    FUNCTION = "apply"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("The prompt with the image conditioning.", "The negative prompt with the same conditioning.",
                       "An empty latent of the video's size, to sample.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **wan_conditioning_inputs(),
        }, "optional": {
            "start_image": ("IMAGE", {"tooltip": "The first frame (a batch: the first frames)."}),
            "end_image": ("IMAGE", {"tooltip": "The last frame: first-last-frame models (Wan2.1 FLF2V) only."}),
            "clip_vision_start_image": ("CLIP_VISION_OUTPUT", {"tooltip": "CLIP Vision Encode of the start image "
                                                                          "(I2V and FLF2V models need it)."}),
            "clip_vision_end_image": ("CLIP_VISION_OUTPUT", {"tooltip": "CLIP Vision Encode of the end image."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None, length=None, batch_size=None):
        return verdict(wan_video_problems(cls, width, height, length, batch_size))

    def apply(self, positive, negative, vae, width, height, length, batch_size, start_image=None, end_image=None,
              clip_vision_start_image=None, clip_vision_end_image=None):
        refuse(wan_video_problems(self, width, height, length, batch_size))
        check_image_to_video_inputs(width, height, length, start_image, end_image)
        model = vae.load()
        with torch.inference_mode():
            latent, mask = build_image_conditioning(model, width, height, length, start_image, end_image,
                                                    unit_progress()[0])
        values = {CONCAT_LATENT: latent, CONCAT_MASK: mask}
        clip = joined_clip_outputs(clip_vision_start_image, clip_vision_end_image)
        if clip is not None:
            values[CLIP_OUTPUT] = clip
        empty = torch.zeros(batch_size, WAN_LATENT_CHANNELS, *latent.shape[2:], device=bridge.intermediate_device())
        return attach_image(positive, values), attach_image(negative, values), {"samples": empty}


NODE_CLASS_MAPPINGS = {"WanCLIPVisionLoader": WanCLIPVisionLoader, "WanCLIPVisionEncode": WanCLIPVisionEncode,
                       "WanImageToVideoConditioning": WanImageToVideoConditioning}
NODE_DISPLAY_NAME_MAPPINGS = {"WanCLIPVisionLoader": "Load CLIP Vision (Wan)",
                              "WanCLIPVisionEncode": "Wan CLIP Vision Encode",
                              "WanImageToVideoConditioning": "Wan Image to Video"}
