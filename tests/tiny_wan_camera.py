"""A tiny random Wan2.1 Fun-Camera transformer in the layouts it ships in, for tests.

Fun-Camera (alibaba-pai Wan2.1-Fun-V1.1-1.3B / 14B-Control-Camera; ComfyUI's CameraWanModel) is a Wan2.1 image-to-video
transformer reading 32 channels (noise + the start image's latent, no mask), with CLIP cross-attention, plus a
`control_adapter`: conv [width, 24 * 64, 2, 2] and one residual block of two 3x3 convs. Its tensors are written here
from their shapes (independently of the pack's adapter module); the Wan part through tiny_wan's key map. Files:
VideoX-Fun's (original Wan names) and Comfy-Org's (the same under `model.diffusion_model.`).
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

from tiny_wan import comfy_scaled_fp8, diffusers_to_original, tiny_wan_config, tiny_wan_transformer

TINY_CAMERA_CONFIG = {**tiny_wan_config("i2v"), "in_channels": 32}
CAMERA_CHANNELS = 24
WAN_CAMERA_FILE = "wan2.1_fun_camera_tiny.safetensors"  # its name in the integration server's diffusion_models


def camera_adapter_shapes(width: int, channels: int = CAMERA_CHANNELS) -> dict[str, tuple[int, ...]]:
    """The control adapter's tensors as VideoX-Fun's SimpleAdapter (and ComfyUI's WanCamAdapter) name them."""
    return {
        "control_adapter.conv.weight": (width, channels * 64, 2, 2), "control_adapter.conv.bias": (width,),
        **{f"control_adapter.residual_blocks.0.{conv}.{kind}": shape for conv in ("conv1", "conv2")
           for kind, shape in (("weight", (width, width, 3, 3)), ("bias", (width,)))},
    }


def tiny_camera_weights(seed: int = 0, **overrides) -> dict[str, torch.Tensor]:
    """Original-layout weights of a 2-layer, 128-wide Fun-Camera model, every tensor random (1/sqrt(fan-in))."""
    model = tiny_wan_transformer("i2v", seed, **{"in_channels": TINY_CAMERA_CONFIG["in_channels"], **overrides})
    generator = torch.Generator().manual_seed(seed + 1)
    original = diffusers_to_original({k: v.contiguous() for k, v in model.state_dict().items()})
    width = model.config.num_attention_heads * model.config.attention_head_dim
    for key, shape in camera_adapter_shapes(width).items():
        std = 0.2 if len(shape) == 1 else (shape[1] * shape[2] * shape[3]) ** -0.5
        original[key] = torch.randn(shape, generator=generator) * std
    return original


def write_camera_layouts(original: dict[str, torch.Tensor], directory: str) -> dict[str, str]:
    """Layout name -> path: Comfy-Org's file (prefixed), VideoX-Fun's release file, ComfyUI's scaled fp8."""
    os.makedirs(directory, exist_ok=True)
    paths = {
        "comfy_prefixed": os.path.join(directory, WAN_CAMERA_FILE),
        "original_safetensors": os.path.join(directory, "fun_camera_original.safetensors"),
        "comfy_fp8_scaled": os.path.join(directory, "fun_camera_fp8_e4m3fn_scaled.safetensors"),
    }
    save_file({"model.diffusion_model." + k: v for k, v in original.items()}, paths["comfy_prefixed"])
    save_file(original, paths["original_safetensors"])
    save_file(comfy_scaled_fp8(original), paths["comfy_fp8_scaled"])
    return paths
