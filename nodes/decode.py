"""VAE nodes: load the DC-AE, decode latents to images and encode images to latents."""

from __future__ import annotations

import torch

from .. import comfy_bridge as bridge
from ..loaders.dcae import load_dcae
from ..loaders.wan_vae import load_wan_vae
from ..samplers.latents import check_frame_count
from ..vae.dcae import dcae_decode_memory, decode_dcae, encode_dcae
from ..vae.tiling import whole_frames_fit
from ..vae.wan import decode_wan, encode_wan, wan_decode_memory
from .options import DTYPE_INPUT, model_choices, resolve_dtype, resolve_model
from .progress import unit_progress

FOLDERS = ("vae",)


def _load_for_decode(vae, latent_shape, tiling: str, tile_size: int, memory) -> tuple:
    """(the VAE on its device, the tiling mode to use), with ComfyUI asked to make room for the decode first.

    "auto" decodes whole frames when the VAE and a whole frame's activations take at most half the device's total
    memory, else in tiles (`whole_frames_fit`): the same latent always takes the same path, whatever is loaded.
    """
    if tiling == "auto":
        device = vae.patcher.load_device
        whole = memory(vae.module, latent_shape, False, tile_size)
        fits = whole_frames_fit(vae.patcher.model_size(), whole, bridge.total_memory(device))
        tiling = "off" if fits else "on"
    model = vae.load(memory(vae.module, latent_shape, tiling == "on", tile_size))
    return model, tiling


class DCAELoader:
    DESCRIPTION = "Loads Sana's DC-AE (f32c32) from a diffusers folder / file or the original mit-han-lab file."
    CATEGORY = "Sana"
    FUNCTION = "load"
    RETURN_TYPES = ("DCAE_VAE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_name": (model_choices(*FOLDERS), {"tooltip": "From models/vae."}), "dtype": DTYPE_INPUT}}

    def load(self, vae_name, dtype):
        path = resolve_model(FOLDERS, vae_name)
        vae = load_dcae(path, resolve_dtype(dtype, "vae", [torch.bfloat16, torch.float32]))
        return (bridge.ModelHandle(vae, "vae", family="sana"),)


class DCAEDecode:
    DESCRIPTION = "Decodes a Sana latent to images; tiles large images (2K/4K) with blended overlaps."
    CATEGORY = "Sana"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("DCAE_VAE",),
            "samples": ("LATENT",),
            "tiling": (["auto", "on", "off"], {"default": "auto",
                                               "tooltip": ("auto: whole images when the VAE and one whole image take "
                                                           "at most half the device's memory, else tiles; any "
                                                           "out-of-memory retries in tiles.")}),
            "tile_size": ("INT", {"default": 1024, "min": 256, "max": 4096, "step": 32,
                                  "tooltip": "Tile edge in pixels; 1024 avoids seams in flat areas at 4K."}),
            "tile_overlap": ("INT", {"default": 128, "min": 32, "max": 1024, "step": 32}),
        }}

    def decode(self, vae, samples, tiling, tile_size, tile_overlap):
        if tile_overlap >= tile_size:
            raise ValueError(f"tile_overlap ({tile_overlap}) must be smaller than tile_size ({tile_size}).")
        model, tiling = _load_for_decode(vae, samples["samples"].shape, tiling, tile_size, dcae_decode_memory)
        with torch.inference_mode():
            images = decode_dcae(model, samples["samples"], tiling, tile_size, tile_overlap,
                                 progress=unit_progress()[0])
        return (images,)


class DCAEEncode:
    DESCRIPTION = "Encodes images to a Sana latent (for image-to-image with the sampler's denoise)."
    CATEGORY = "Sana"
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("DCAE_VAE",), "image": ("IMAGE",)}}

    def encode(self, vae, image):
        model = vae.load()
        with torch.inference_mode():
            latents = encode_dcae(model, image, progress=unit_progress()[0])
        return ({"samples": latents.to(bridge.intermediate_device())},)


class WanVAELoader:
    DESCRIPTION = ("Loads a Wan VAE: the Wan2.1 VAE (Wan2.1 models, Wan2.2 A14B: Comfy-Org wan_2.1_vae.safetensors, "
                   "Wan2.1_VAE.pth) or the 48-channel Wan2.2 VAE (TI2V-5B: wan2.2_vae.safetensors, Wan2.2_VAE.pth); "
                   "diffusers folders too. Which one is read from the weights.")
    CATEGORY = "Wan"
    FUNCTION = "load"
    RETURN_TYPES = ("WAN_VAE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_name": (model_choices(*FOLDERS), {"tooltip": "From models/vae."}), "dtype": DTYPE_INPUT}}

    def load(self, vae_name, dtype):
        path = resolve_model(FOLDERS, vae_name)
        vae = load_wan_vae(path, resolve_dtype(dtype, "vae", [torch.bfloat16, torch.float32]))
        return (bridge.ModelHandle(vae, "vae", family="wan"),)


class WanVAEDecode:
    DESCRIPTION = ("Decodes a Wan video latent to frames (IMAGE, all videos of the batch one after another), frame "
                   "by frame with the causal cache; tiles large frames.")
    CATEGORY = "Wan"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE", "INT")
    RETURN_NAMES = ("frames", "frame_count")
    OUTPUT_TOOLTIPS = ("Frames [B*F, H, W, 3].", "Frames per video (F), for Save Wan Video with a batch.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("WAN_VAE",),
            "samples": ("LATENT",),
            "tiling": (["auto", "on", "off"], {"default": "auto",
                                               "tooltip": ("auto: whole frames when the VAE and one whole frame take "
                                                           "at most half the device's memory, else tiles; any "
                                                           "out-of-memory retries in tiles.")}),
            "tile_size": ("INT", {"default": 1024, "min": 64, "max": 4096, "step": 32,
                                  "tooltip": "Tile edge in pixels for tiled decoding (on, or auto above this size)."}),
            "tile_overlap": ("INT", {"default": 64, "min": 16, "max": 1024, "step": 16}),
        }}

    def decode(self, vae, samples, tiling, tile_size, tile_overlap):
        if tile_overlap >= tile_size:
            raise ValueError(f"tile_overlap ({tile_overlap}) must be smaller than tile_size ({tile_size}).")
        model, tiling = _load_for_decode(vae, samples["samples"].shape, tiling, tile_size, wan_decode_memory)
        with torch.inference_mode():
            frames = decode_wan(model, samples["samples"], tiling, tile_size, tile_overlap,
                                progress=unit_progress()[0])
        return (frames, frames.shape[0] // samples["samples"].shape[0])


class WanVAEEncode:
    DESCRIPTION = "Encodes 4n+1 frames (IMAGE) to a Wan latent, for video-to-video with the sampler's denoise."
    CATEGORY = "Wan"
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("WAN_VAE",), "frames": ("IMAGE",)}}

    def encode(self, vae, frames):
        check_frame_count(frames.shape[0])
        model = vae.load()
        with torch.inference_mode():
            latents = encode_wan(model, frames, progress=unit_progress()[0])
        return ({"samples": latents.to(bridge.intermediate_device())},)


NODE_CLASS_MAPPINGS = {"DCAELoader": DCAELoader, "DCAEDecode": DCAEDecode, "DCAEEncode": DCAEEncode,
                       "WanVAELoader": WanVAELoader, "WanVAEDecode": WanVAEDecode, "WanVAEEncode": WanVAEEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"DCAELoader": "Load DC-AE (Sana VAE)", "DCAEDecode": "DC-AE Decode",
                              "DCAEEncode": "DC-AE Encode", "WanVAELoader": "Load Wan VAE (2.1 / 2.2)",
                              "WanVAEDecode": "Wan VAE Decode", "WanVAEEncode": "Wan VAE Encode"}
