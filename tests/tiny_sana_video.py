"""Tiny random Sana-Video transformers and every on-disk layout the Sana-Video loader accepts, for tests.

The tiny config follows the loader's inference rule for unknown widths (32-channel heads for both attentions). The
diffusers -> original key map is the Sana one of tiny_sana.py plus the two video keys, written out here
independently of the loader's map (diffusers' scripts/convert_sana_video_to_diffusers.py read backwards).
"""

from __future__ import annotations

import torch
from diffusers import SanaVideoTransformer3DModel

from tiny_sana import _BLOCK, _FUSED, _TOP_LEVEL, _fused_block_tensors, _rename, randomised, write_sana_layouts

TINY_CONFIG = {
    "in_channels": 16,
    "out_channels": 16,
    "num_attention_heads": 2,
    "attention_head_dim": 32,
    "num_layers": 2,
    "num_cross_attention_heads": 2,
    "cross_attention_head_dim": 32,
    "cross_attention_dim": 64,
    "caption_channels": 64,
    "mlp_ratio": 2.5,
    "attention_bias": False,
    "sample_size": 30,
    "patch_size": (1, 2, 2),
    "qk_norm": "rms_norm_across_heads",
}
LAYOUTS = ("diffusers_folder", "pipeline_folder", "diffusers_single", "original_pth", "original_safetensors",
           "comfy_prefixed")

_VIDEO_TOP_LEVEL = {**_TOP_LEVEL, "patch_embedding.": "x_embedder.proj."}
_VIDEO_BLOCK = {**_BLOCK, "ff.conv_temp.": "mlp.t_conv."}
_NULL_CAPTION_TOKENS = 300


def tiny_sana_video_transformer(seed: int = 0, **overrides) -> SanaVideoTransformer3DModel:
    """A 2-layer, 64-wide Sana-Video with every parameter random (zero-init layers included)."""
    return randomised(SanaVideoTransformer3DModel(**{**TINY_CONFIG, **overrides}), seed)


def write_sana_video_layouts(model: SanaVideoTransformer3DModel, directory: str) -> dict[str, str]:
    """Write `model` in every layout the loader accepts; layout name -> path to hand to the loader."""
    return write_sana_layouts(model, directory, diffusers_to_original, "sana_video")


def diffusers_to_original(state_dict: dict, config) -> dict[str, torch.Tensor]:
    """Diffusers keys -> the NVlabs Sana-Video layout, with the null caption `y_embedder.y_embedding` that release
    files carry (diffusers' conversion script drops it)."""
    original = {}
    for key, tensor in state_dict.items():
        parts = key.split(".", 2)
        if parts[0] != "transformer_blocks":
            original[_rename(key, _VIDEO_TOP_LEVEL)] = tensor
        elif not any(parts[2].startswith(part) for names in _FUSED.values() for part in names):
            original[f"blocks.{parts[1]}.{_rename(parts[2], _VIDEO_BLOCK)}"] = tensor
    for index in range(config["num_layers"]):
        original.update(_fused_block_tensors(state_dict, index))
    dtype = state_dict["patch_embedding.weight"].dtype
    original["y_embedder.y_embedding"] = torch.zeros(_NULL_CAPTION_TOKENS, config["caption_channels"], dtype=dtype)
    return original

