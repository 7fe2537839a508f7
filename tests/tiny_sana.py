"""Tiny random Sana transformers and every on-disk layout the Sana loader accepts, for tests.

The tiny configs follow the loader's inference rules (32-channel linear-attention heads, 64-channel cross-attention
heads for unknown widths, PE only from sample_size 64 up), so a file written here must load back to the same model.
The diffusers -> original key map is written out independently of the loader's map: a swapped or misnamed entry
in either one then shows up as a different forward output.
"""

from __future__ import annotations

import os
import re

import torch
from diffusers import SanaTransformer2DModel
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from safetensors.torch import save_file

TINY_CONFIG = {
    "in_channels": 8,
    "out_channels": 8,
    "num_attention_heads": 2,
    "attention_head_dim": 32,
    "num_layers": 2,
    "num_cross_attention_heads": 1,
    "cross_attention_head_dim": 64,
    "cross_attention_dim": 64,
    "caption_channels": 32,
    "mlp_ratio": 2.5,
    "attention_bias": False,
    "sample_size": 32,
    "patch_size": 1,
    "interpolation_scale": None,
    "qk_norm": None,
    "guidance_embeds": False,
}
VARIANTS = {
    "base": {},
    "qk_norm": {"qk_norm": "rms_norm_across_heads"},
    "sprint": {"qk_norm": "rms_norm_across_heads", "guidance_embeds": True},
    # The 4K rule of the real models: sample_size 128 -> sin-cos PE with interpolation 2.0.
    "4k": {"sample_size": 128, "interpolation_scale": 2.0},
}
LAYOUTS = ("diffusers_folder", "pipeline_folder", "diffusers_single", "original_pth", "original_safetensors",
           "comfy_prefixed")

_TOP_LEVEL = {
    "patch_embed.proj.": "x_embedder.proj.",
    "caption_projection.linear_1.": "y_embedder.y_proj.fc1.",
    "caption_projection.linear_2.": "y_embedder.y_proj.fc2.",
    "caption_norm.": "attention_y_norm.",
    "time_embed.linear.": "t_block.1.",
    "time_embed.emb.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
    "time_embed.emb.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
    "time_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
    "time_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
    "time_embed.guidance_embedder.linear_1.": "cfg_embedder.mlp.0.",
    "time_embed.guidance_embedder.linear_2.": "cfg_embedder.mlp.2.",
    "proj_out.": "final_layer.linear.",
    "scale_shift_table": "final_layer.scale_shift_table",
}
_BLOCK = {
    "scale_shift_table": "scale_shift_table",
    "attn1.to_out.0.": "attn.proj.",
    "attn1.norm_q.": "attn.q_norm.",
    "attn1.norm_k.": "attn.k_norm.",
    "attn2.to_q.": "cross_attn.q_linear.",
    "attn2.to_out.0.": "cross_attn.proj.",
    "attn2.norm_q.": "cross_attn.q_norm.",
    "attn2.norm_k.": "cross_attn.k_norm.",
    "ff.conv_inverted.": "mlp.inverted_conv.conv.",
    "ff.conv_depth.": "mlp.depth_conv.conv.",
    "ff.conv_point.": "mlp.point_conv.conv.",
}
_FUSED = {
    "attn.qkv.": ("attn1.to_q.", "attn1.to_k.", "attn1.to_v."),
    "cross_attn.kv_linear.": ("attn2.to_k.", "attn2.to_v."),
}
_NULL_CAPTION_TOKENS = 300


def tiny_sana_config(variant: str = "base") -> dict:
    return {**TINY_CONFIG, **VARIANTS[variant]}


def tiny_sana_transformer(variant: str = "base", seed: int = 0, **overrides) -> SanaTransformer2DModel:
    """A 2-layer, 64-wide Sana of the given variant with every parameter random (zero-init layers included).

    `overrides` change config fields, e.g. 32 latent channels and a caption width that fits a tiny text encoder.
    """
    return randomised(SanaTransformer2DModel(**{**tiny_sana_config(variant), **overrides}), seed)


def randomised(model, seed: int):
    """`model` in eval mode with every parameter drawn from a seeded N(0, 0.2^2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval()


def write_sana_layouts(model: SanaTransformer2DModel, directory: str, to_original=None,
                       stem: str = "sana") -> dict[str, str]:
    """Write `model` in every layout the loader accepts; layout name -> path to hand to the loader.

    `to_original(state_dict, config)` is the diffusers -> original key map (default: Sana's); `stem` names the files.
    """
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    original = (to_original or diffusers_to_original)(state_dict, model.config)
    paths = {
        "diffusers_folder": os.path.join(directory, "diffusers"),
        "pipeline_folder": os.path.join(directory, "pipeline"),
        "diffusers_single": os.path.join(directory, f"{stem}_diffusers.safetensors"),
        "original_pth": os.path.join(directory, f"{stem}.pth"),
        "original_safetensors": os.path.join(directory, f"{stem}.safetensors"),
        "comfy_prefixed": os.path.join(directory, f"{stem}_comfy.safetensors"),
    }
    model.save_pretrained(paths["diffusers_folder"])
    model.save_pretrained(os.path.join(paths["pipeline_folder"], "transformer"))
    save_file(state_dict, paths["diffusers_single"])
    torch.save({"state_dict": original, "epoch": 1}, paths["original_pth"])
    save_file(original, paths["original_safetensors"])
    save_file({"model.diffusion_model." + k: v for k, v in original.items()}, paths["comfy_prefixed"])
    return paths


def diffusers_to_original(state_dict: dict, config) -> dict[str, torch.Tensor]:
    """Diffusers keys -> the original Sana release layout, with the extras real files carry.

    Those extras are the (unused below 2K) `pos_embed` of the training grid, the null caption
    `y_embedder.y_embedding` and, for Sprint, the `logvar_linear` training head.
    """
    original = {}
    for key, tensor in state_dict.items():
        block = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", key)
        if block is None:
            original[_rename(key, _TOP_LEVEL)] = tensor
        elif not any(block[2].startswith(part) for parts in _FUSED.values() for part in parts):
            original[f"blocks.{block[1]}.{_rename(block[2], _BLOCK)}"] = tensor
    for index in range(config["num_layers"]):
        original.update(_fused_block_tensors(state_dict, index))
    original.update(_training_extras(config, state_dict["patch_embed.proj.weight"].dtype))
    return original


def _fused_block_tensors(state_dict: dict, index: int) -> dict[str, torch.Tensor]:
    fused = {}
    for original, parts in _FUSED.items():
        for suffix in ("weight", "bias"):
            keys = [f"transformer_blocks.{index}.{part}{suffix}" for part in parts]
            if keys[0] in state_dict:
                fused[f"blocks.{index}.{original}{suffix}"] = torch.cat([state_dict[k] for k in keys], dim=0)
    return fused


def _training_extras(config, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    grid = config["sample_size"] // config["patch_size"]
    pos_embed = get_2d_sincos_pos_embed(
        hidden, grid, base_size=grid, interpolation_scale=config["interpolation_scale"] or 1.0, output_type="pt"
    )
    extras = {
        "pos_embed": pos_embed.unsqueeze(0).to(dtype),
        "y_embedder.y_embedding": torch.zeros(_NULL_CAPTION_TOKENS, config["caption_channels"], dtype=dtype),
    }
    if config["guidance_embeds"]:
        extras["logvar_linear.weight"] = torch.zeros(1, hidden, dtype=dtype)
        extras["logvar_linear.bias"] = torch.zeros(1, dtype=dtype)
    return extras


def _rename(key: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if key == new or (new.endswith(".") and key.startswith(new)):
            return old + key[len(new):]
    raise KeyError(f"tiny_sana has no original name for '{key}'")
