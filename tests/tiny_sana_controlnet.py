"""A tiny random Sana ControlNet and the on-disk layouts it ships in, for tests.

The original layout is NVlabs' whole `SanaMSControlNet`: a base transformer (`blocks.*`, `final_layer.*`, embedders)
plus `controlnet.{i}.copied_block.*`, `controlnet.0.before_proj.*` and `controlnet.{i}.after_proj.*`, the keys
diffusers' scripts/convert_sana_controlnet_to_diffusers.py reads. The diffusers -> original map here is the inverse
of that script, written out on its own (the copied blocks through tiny_sana's independent block map), so a wrong
entry in the loader's map shows up as different weights.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import numpy as np
import torch
from diffusers import SanaControlNetModel
from PIL import Image
from safetensors.torch import save_file

from tiny_sana import diffusers_to_original, tiny_sana_transformer

TINY_CONTROLNET_CONFIG = {
    "in_channels": 32,
    "out_channels": 32,
    "num_attention_heads": 2,
    "attention_head_dim": 32,
    "num_layers": 2,
    "num_cross_attention_heads": 1,
    "cross_attention_head_dim": 64,
    "cross_attention_dim": 64,
    "caption_channels": 64,
    "mlp_ratio": 2.5,
    "sample_size": 32,
    "patch_size": 1,
    "interpolation_scale": None,
}
LAYOUTS = ("diffusers_folder", "pipeline_folder", "diffusers_single", "original_pth", "original_safetensors")
# The integration server's files: models/controlnet/CONTROLNET_FILE and input/CONTROL_IMAGE (the Sana graph's size).
CONTROLNET_FILE = "sana_controlnet_tiny.pth"
CONTROL_IMAGE, CONTROL_IMAGE_SIZE = "sana_control_image.png", (96, 64)


def tiny_sana_controlnet(seed: int = 7, **overrides) -> SanaControlNetModel:
    """Every parameter random, the zero-initialised input and output projections too (else it would do nothing)."""
    model = SanaControlNetModel(**{**TINY_CONTROLNET_CONFIG, **overrides})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval().requires_grad_(False)


def controlnet_to_original(controlnet_state: dict, config, base_original: dict) -> dict[str, torch.Tensor]:
    """A whole original SanaMSControlNet file: `base_original` (an original-layout Sana transformer of the same
    width) with its embedders replaced by the ControlNet's and the ControlNet's blocks and projections added."""
    extra = {}
    shared = {}
    for key, tensor in controlnet_state.items():
        if key.startswith("input_block."):
            extra["controlnet.0.before_proj." + key[len("input_block."):]] = tensor
        elif (match := re.fullmatch(r"controlnet_blocks\.(\d+)\.(.+)", key)) is not None:
            extra[f"controlnet.{match[1]}.after_proj.{match[2]}"] = tensor
        else:
            shared[key] = tensor
    as_transformer = {**config, "guidance_embeds": False}
    original = diffusers_to_original(shared, as_transformer)
    for key, tensor in original.items():
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        extra[f"controlnet.{match[1]}.copied_block.{match[2]}" if match else key] = tensor
    return {**base_original, **extra}


def write_controlnet_layouts(controlnet: SanaControlNetModel, base_transformer, directory: str) -> dict[str, str]:
    """Write `controlnet` in every layout the loader accepts (the original ones around `base_transformer`)."""
    state = {k: v.contiguous() for k, v in controlnet.state_dict().items()}
    base = diffusers_to_original({k: v.contiguous() for k, v in base_transformer.state_dict().items()},
                                 base_transformer.config)
    original = controlnet_to_original(state, dict(controlnet.config), base)
    paths = {
        "diffusers_folder": os.path.join(directory, "controlnet_diffusers"),
        "pipeline_folder": os.path.join(directory, "sana_controlnet_pipeline"),
        "diffusers_single": os.path.join(directory, "controlnet_diffusers.safetensors"),
        "original_pth": os.path.join(directory, "controlnet.pth"),
        "original_safetensors": os.path.join(directory, "controlnet.safetensors"),
    }
    controlnet.save_pretrained(paths["diffusers_folder"])
    controlnet.save_pretrained(os.path.join(paths["pipeline_folder"], "controlnet"))
    save_file(state, paths["diffusers_single"])
    torch.save({"state_dict": original}, paths["original_pth"])
    save_file(original, paths["original_safetensors"])
    return paths


def edge_map(width: int, height: int) -> Image.Image:
    """A white rectangle outline on black, like an HED edge map."""
    edges = np.zeros((height, width, 3), dtype=np.uint8)
    edges[height // 4:3 * height // 4, [width // 4, 3 * width // 4]] = 255
    edges[[height // 4, 3 * height // 4], width // 4:3 * width // 4 + 1] = 255
    return Image.fromarray(edges)


def write_integration_files(controlnet_dir: str, input_dir: str) -> None:
    """A one-block ControlNet that fits tiny_models' Sana set (2 blocks, 64 wide), in the original layout, and a
    control image of CONTROL_IMAGE_SIZE."""
    controlnet = tiny_sana_controlnet(seed=9, num_layers=1)
    base = tiny_sana_transformer("base", seed=10, in_channels=32, out_channels=32, caption_channels=64)
    os.makedirs(controlnet_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as layouts:
        paths = write_controlnet_layouts(controlnet, base, layouts)
        shutil.copy(paths["original_pth"], os.path.join(controlnet_dir, CONTROLNET_FILE))
    os.makedirs(input_dir, exist_ok=True)
    edge_map(*CONTROL_IMAGE_SIZE).save(os.path.join(input_dir, CONTROL_IMAGE))
