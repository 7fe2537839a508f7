"""A tiny random Wan2.1 VACE transformer (`WanVACETransformer3DModel`) and the layouts it ships in, for tests.

Original names (Wan-AI's Wan2.1-VACE release and Comfy-Org's repackaged files, as ComfyUI's VaceWanModel names them):
the VACE blocks are Wan blocks named like the main ones plus `before_proj` (block 0 only) and `after_proj`, which
diffusers calls `proj_in` / `proj_out`; `vace_patch_embedding` keeps its name. The map is written here independently
of the loader's (diffusers' converter).
"""

from __future__ import annotations

import os
import re

import torch
from diffusers import WanVACETransformer3DModel
from safetensors.torch import save_file

from tiny_wan import _BLOCK, _rename, diffusers_to_original, tiny_wan_config

# Two main blocks, a VACE block after each (ComfyUI's rule: every num_layers // count-th block), 96 control channels
# (16 inactive + 16 reactive latent channels + 64 mask channels), as the real models.
TINY_VACE_CONFIG = {**tiny_wan_config("t2v"), "vace_layers": [0, 1], "vace_in_channels": 96}
_VACE_ONLY = {"proj_in.": "before_proj.", "proj_out.": "after_proj."}
WAN_VACE_FILE = "wan2.1_vace_tiny.safetensors"  # its name in the integration server's diffusion_models


def tiny_vace_transformer(seed: int = 0, **overrides) -> WanVACETransformer3DModel:
    """Every parameter random (the zero-initialised projections too), scaled by 1/sqrt(fan-in)."""
    model = WanVACETransformer3DModel(**{**TINY_VACE_CONFIG, **overrides})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            std = 0.2 if parameter.ndim == 1 else parameter[0].numel() ** -0.5
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def vace_diffusers_to_original(state_dict: dict) -> dict[str, torch.Tensor]:
    original, main = {}, {}
    for key, tensor in state_dict.items():
        block = re.fullmatch(r"vace_blocks\.(\d+)\.(.+)", key)
        if block is not None:
            table = _VACE_ONLY if block[2].startswith(tuple(_VACE_ONLY)) else _BLOCK
            original[f"vace_blocks.{block[1]}.{_rename(block[2], table)}"] = tensor
        elif key.startswith("vace_patch_embedding."):
            original[key] = tensor
        else:
            main[key] = tensor
    return {**diffusers_to_original(main), **original}


def write_vace_layouts(model: WanVACETransformer3DModel, directory: str) -> dict[str, str]:
    """Layout name -> path: Comfy-Org's single file (original names, `model.diffusion_model.` prefix), the original
    release file, a diffusers folder."""
    os.makedirs(directory, exist_ok=True)
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    original = vace_diffusers_to_original(state_dict)
    paths = {
        "comfy_prefixed": os.path.join(directory, "wan2.1_vace_tiny.safetensors"),
        "original_safetensors": os.path.join(directory, "vace_original.safetensors"),
        "diffusers_folder": os.path.join(directory, "vace_diffusers"),
    }
    save_file({"model.diffusion_model." + k: v for k, v in original.items()}, paths["comfy_prefixed"])
    save_file(original, paths["original_safetensors"])
    model.save_pretrained(paths["diffusers_folder"])
    return paths
