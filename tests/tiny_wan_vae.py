"""Tiny random Wan2.1 and Wan2.2 VAEs (the real architectures at toy widths) and writers for each layout they ship
in."""

from __future__ import annotations

import json
import os
import re

import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file

# Wan2.1's structure (4 levels, 2 residual blocks each, temporal down/up-sampling in the last two, single-head
# attention in the middle blocks, 16 latent channels) at base_dim 8 instead of 96. diffusers' converter hard-codes
# the decoder's block numbering of exactly this structure, so only the widths shrink. Widths must stay even
# (the decoder's upsamplers halve them); RMS norms have no groups, so any even width works.
TINY_WAN_VAE_CONFIG = {
    "base_dim": 8,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
}

# The 48-channel Wan2.2 VAE (Wan2.2-TI2V-5B: base_dim 160, decoder_base_dim 256) at toy widths; the rest is the real
# structure (residual blocks, 2x2 pixel patches, 16x spatial compression).
TINY_WAN22_VAE_CONFIG = {
    "base_dim": 8,
    "decoder_base_dim": 16,
    "z_dim": 48,
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_spatial": 16,
}


def tiny_wan_vae(seed: int = 0, config: dict | None = None) -> AutoencoderKLWan:
    """Seeded random weights; the RMS-norm gains (all ones at init) are perturbed too, so no two same-shaped
    tensors are equal and a key mapped onto the wrong tensor changes the output. `config`: TINY_WAN22_VAE_CONFIG
    for the Wan2.2 VAE."""
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**(config or TINY_WAN_VAE_CONFIG))
    with torch.no_grad():
        for name, tensor in vae.state_dict().items():
            if name.endswith("gamma"):
                tensor.add_(0.1 * torch.randn_like(tensor))
    return vae.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------- original layout

# Whole keys and key prefixes, diffusers name -> original Wan2.1 / ComfyUI name; first matching prefix wins.
_ORIGINAL_TOP = {
    "quant_conv.": "conv1.",
    "post_quant_conv.": "conv2.",
    "encoder.conv_in.": "encoder.conv1.",
    "decoder.conv_in.": "decoder.conv1.",
    "encoder.norm_out.": "encoder.head.0.",
    "decoder.norm_out.": "decoder.head.0.",
    "encoder.conv_out.": "encoder.head.2.",
    "decoder.conv_out.": "decoder.head.2.",
    "encoder.mid_block.attentions.0.": "encoder.middle.1.",
    "decoder.mid_block.attentions.0.": "decoder.middle.1.",
}

# Inside a residual block: `residual` is an nn.Sequential (norm, SiLU, conv, norm, SiLU, dropout, conv).
_RESIDUAL = {"norm1.": "residual.0.", "conv1.": "residual.2.", "norm2.": "residual.3.", "conv2.": "residual.6.",
             "conv_shortcut.": "shortcut."}

_MID = re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$")
_DOWN = re.compile(r"^encoder\.down_blocks\.(\d+)\.(.+)$")
_UP = re.compile(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)$")


_NESTED_DOWN = re.compile(r"^encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsampler)\.(.+)$")
_NESTED_UP = re.compile(r"^decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsampler)\.(.+)$")


def to_wan22_original_layout(state_dict: dict, num_res_blocks: int = 2) -> dict:
    """diffusers -> the original Wan2.2 VAE names (test-only, written from ComfyUI's comfy/ldm/wan/vae2_2.py module
    tree, which Comfy-Org's `wan2.2_vae.safetensors` fills): each level is `downsamples.N.downsamples.M` /
    `upsamples.N.upsamples.M`, its residual blocks first, its resampler after them (encoder: index num_res_blocks,
    decoder: num_res_blocks + 1)."""
    result = {}
    for key, value in state_dict.items():
        for pattern, side, inner, resampler_index in ((_NESTED_DOWN, "encoder.downsamples", "downsamples",
                                                       num_res_blocks),
                                                      (_NESTED_UP, "decoder.upsamples", "upsamples",
                                                       num_res_blocks + 1)):
            if m := pattern.match(key):
                level, _, index, rest = m.groups()
                if index is None:
                    key = f"{side}.{level}.{inner}.{resampler_index}.{rest}"
                else:
                    key = f"{side}.{level}.{inner}.{index}.{_residual(rest)}"
                break
        else:
            key = _original_key(key, num_res_blocks)
        result[key] = value
    return result


def to_original_layout(state_dict: dict, num_res_blocks: int = 2) -> dict:
    """The inverse of diffusers' `convert_wan_vae_to_diffusers` (test-only): the original Wan2.1 names, which
    Comfy-Org's `wan_2.1_vae.safetensors` keeps. Values are passed through, so shapes work as well as tensors.

    The original decoder is one flat list per level: `num_res_blocks + 1` residual blocks, then the upsampler.
    """
    return {_original_key(key, num_res_blocks): value for key, value in state_dict.items()}


def _original_key(key: str, num_res_blocks: int) -> str:
    for new, old in _ORIGINAL_TOP.items():
        if key.startswith(new):
            return old + key[len(new):]
    if m := _MID.match(key):
        side, index, rest = m.groups()
        return f"{side}.middle.{2 * int(index)}.{_residual(rest)}"
    if m := _DOWN.match(key):
        return f"encoder.downsamples.{m[1]}.{_residual(m[2])}"
    block, kind, index, rest = _UP.match(key).groups()
    per_level = num_res_blocks + 2
    if kind == "upsamplers":
        return f"decoder.upsamples.{int(block) * per_level + num_res_blocks + 1}.{rest}"
    return f"decoder.upsamples.{int(block) * per_level + int(index)}.{_residual(rest)}"


def _residual(rest: str) -> str:
    new = next((n for n in _RESIDUAL if rest.startswith(n)), None)
    return rest if new is None else _RESIDUAL[new] + rest[len(new):]


def write_wan_vae_layouts(vae: AutoencoderKLWan, directory: str) -> dict[str, str]:
    """Save `vae` in every layout `load_wan_vae` reads; layout name -> the path to hand to the loader.

    The original layout is written as a pickled `.pth` (as Wan-AI ships `Wan2.1_VAE.pth` / `Wan2.2_VAE.pth`) and as
    a safetensors file (as Comfy-Org ships `wan_2.1_vae.safetensors` / `wan2.2_vae.safetensors`, there in fp16 /
    fp32; here in the model's dtype, so loading it back is exact).
    """
    state_dict = {k: v.contiguous() for k, v in vae.state_dict().items()}
    wan22 = vae.config.is_residual
    original = (to_wan22_original_layout if wan22 else to_original_layout)(state_dict)
    paths = {
        "diffusers_folder": os.path.join(directory, "wan-vae-diffusers"),
        "pipeline_folder": os.path.join(directory, "wan-pipeline"),
        "diffusers_single": os.path.join(directory, "wan_vae_diffusers.safetensors"),
        "original_pth": os.path.join(directory, "Wan2.2_VAE.pth" if wan22 else "Wan2.1_VAE.pth"),
        "comfy_safetensors": os.path.join(directory, "wan2.2_vae.safetensors" if wan22 else "wan_2.1_vae.safetensors"),
    }
    vae.save_pretrained(paths["diffusers_folder"])
    vae.save_pretrained(os.path.join(paths["pipeline_folder"], "vae"))
    with open(os.path.join(paths["pipeline_folder"], "model_index.json"), "w") as f:
        f.write('{"_class_name": "WanPipeline", "vae": ["diffusers", "AutoencoderKLWan"]}')
    save_file(state_dict, paths["diffusers_single"])
    torch.save(original, paths["original_pth"])
    save_file(original, paths["comfy_safetensors"])
    return paths


def meta_vae(**config) -> AutoencoderKLWan:
    with torch.device("meta"):
        return AutoencoderKLWan(**config)


def public_config(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def manifest_shapes(manifests_dir: str, name: str) -> dict[str, tuple[int, ...]]:
    with open(os.path.join(manifests_dir, name)) as f:
        return {k: tuple(v[0]) for k, v in json.load(f)["tensors"].items()}
