"""Sana transformer files (original `.pth` / `.safetensors`, ComfyUI-prefixed, diffusers) -> `SanaTransformer2DModel`.

The architecture is read from the tensors themselves, never from the file name: users rename files, and one loader
node must take every Sana variant (600M, 1600M, 1.5, 2K, 4K, Sprint) in every layout.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import partial

import torch
from diffusers import SanaTransformer2DModel
from diffusers.models.embeddings import get_2d_sincos_pos_embed

from .checkpoint import (
    checkpoint_keys, load_folder_state_dict, load_state_dict, read_json, strip_prefix, weight_files_in_folder,
)
from .detect import require_transformer
from .meta_build import build_on_meta, cast_floats, check_converted_layout, main_dtype
from .storage import storage_preparer

DIFFUSERS_STEM = "diffusion_pytorch_model"
_FILE_PREFIXES = ("model.diffusion_model.",)

# Sana's linear self-attention always uses 32-channel heads. Cross-attention heads leave no trace in the weight
# shapes, so they come from the released widths (0.6B: 16 x 72, 1.6B / 4.8B: 20 x 112); other widths are taken to
# use 64-channel heads (hidden // 64), the rule the tiny test models follow.
_LINEAR_HEAD_DIM = 32
_CROSS_HEADS = {1152: 16, 2240: 20}
_GENERIC_CROSS_HEAD_DIM = 64

# Sana uses sin-cos positional embeddings only from 2K up: sample_size 64 -> interpolation 1.0, 128 -> 2.0, i.e.
# sample_size / 64. The 512 / 1024 px files carry an unused `pos_embed` too, so its presence alone says nothing.
_PE_BASE_SAMPLE_SIZE = 64
_DEFAULT_SAMPLE_SIZE = 32

# Sprint: diffusers' SanaSprintPipeline multiplies the guidance scale by `guidance_embeds_scale` (original
# `cfg_embed_scale` 0.1) and feeds the TrigFlow time in [0, 1] unscaled (the original multiplies by 1000 and divides
# by `timestep_norm_scale_factor` 1000), so timestep_scale stays 1.0 as in the released diffusers configs.
_SPRINT_GUIDANCE_SCALE = 0.1

# Our own original -> diffusers key map rather than diffusers' `convert_sana_transformer_to_diffusers`: that one drops
# the QK-norm weights of Sana 1.5 / Sprint, misses Sprint's cfg_embedder and fails on files without `pos_embed`.
_TOP_LEVEL = {
    "x_embedder.proj.": "patch_embed.proj.",
    "y_embedder.y_proj.fc1.": "caption_projection.linear_1.",
    "y_embedder.y_proj.fc2.": "caption_projection.linear_2.",
    "attention_y_norm.": "caption_norm.",
    "t_block.1.": "time_embed.linear.",
    "cfg_embedder.mlp.0.": "time_embed.guidance_embedder.linear_1.",
    "cfg_embedder.mlp.2.": "time_embed.guidance_embedder.linear_2.",
    "final_layer.linear.": "proj_out.",
    "final_layer.scale_shift_table": "scale_shift_table",
}
# Sprint's combined timestep+guidance embedder has no `.emb.` level.
_TIMESTEP_EMBEDDER = {"t_embedder.mlp.0.": "linear_1.", "t_embedder.mlp.2.": "linear_2."}
_BLOCK = {
    "scale_shift_table": "scale_shift_table",
    "attn.proj.": "attn1.to_out.0.",
    "attn.q_norm.": "attn1.norm_q.",
    "attn.k_norm.": "attn1.norm_k.",
    "cross_attn.q_linear.": "attn2.to_q.",
    "cross_attn.proj.": "attn2.to_out.0.",
    "cross_attn.q_norm.": "attn2.norm_q.",
    "cross_attn.k_norm.": "attn2.norm_k.",
    "mlp.inverted_conv.conv.": "ff.conv_inverted.",
    "mlp.depth_conv.conv.": "ff.conv_depth.",
    "mlp.point_conv.conv.": "ff.conv_point.",
}
# Fused projections of the original, split along the output dimension in this order.
_FUSED = {
    "attn.qkv.": ("attn1.to_q.", "attn1.to_k.", "attn1.to_v."),
    "cross_attn.kv_linear.": ("attn2.to_k.", "attn2.to_v."),
}
# Not model weights: the PE is recomputed from the config, the null caption and Sprint's log-variance head only
# serve training.
_DROPPED = {"pos_embed", "y_embedder.y_embedding", "logvar_linear.weight", "logvar_linear.bias"}
_ORIGINAL_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")

# role -> (original-layout key pattern, diffusers-layout key pattern), matched in full.
_ROLES = {
    "patch": (r"x_embedder\.proj\.weight", r"patch_embed\.proj\.weight"),
    "caption": (r"y_embedder\.y_proj\.fc1\.weight", r"caption_projection\.linear_1\.weight"),
    "out": (r"final_layer\.linear\.weight", r"proj_out\.weight"),
    "ff": (r"blocks\.\d+\.mlp\.inverted_conv\.conv\.weight", r"transformer_blocks\.\d+\.ff\.conv_inverted\.weight"),
    "qk_norm": (
        r"blocks\.\d+\.(cross_)?attn\.[qk]_norm\.weight", r"transformer_blocks\.\d+\.attn[12]\.norm_[qk]\.weight"
    ),
    "guidance": (r"cfg_embedder\..+", r"time_embed\.guidance_embedder\..+"),
    "block": (r"blocks\.(\d+)\..+", r"transformer_blocks\.(\d+)\..+"),
}

_SIZES = {(1152, 28): "0.6B", (2240, 20): "1.6B", (2240, 60): "4.8B"}
_BASE_NAMES = {"0.6B": "Sana 600M", "1.6B": "Sana 1600M"}
_RESOLUTION_SUFFIX = {16: " 512px", 64: " 2K", 128: " 4K"}


@dataclass(frozen=True)
class SanaVariant:
    """What the sampler and the UI need to know about a loaded Sana transformer beyond its weights."""

    name: str
    sample_size: int
    default_shift: float
    is_sprint: bool
    latent_channels: int


def load_sana_transformer(path: str, dtype: torch.dtype | None = None,
                          storage: torch.dtype | None = None) -> tuple[SanaTransformer2DModel, SanaVariant]:
    """A Sana transformer from a checkpoint file or a diffusers (model or pipeline) folder.

    `dtype` None keeps the dtype that most of the file's weights have; otherwise every floating tensor is cast.
    `storage` (fp8 / bf16) holds the Linear / Conv weights in that dtype, computed in `dtype` (loaders/storage.py).
    """
    if os.path.isdir(path):
        config, state_dict = _read_folder(path)
    else:
        config, state_dict = _read_file(path)
    model = _build_model(config, state_dict, dtype, os.path.basename(os.path.normpath(path)), storage)
    return model, sana_variant(dict(model.config))


def sana_config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict:
    """The `SanaTransformer2DModel` config of a state dict (original or diffusers layout), from key shapes alone.

    Diffusers files do not store the positional embedding, so without a config.json they are taken to be 1024 px
    models without PE (sample_size 32); 2K / 4K diffusers weights need their folder with config.json.
    """
    original = _find(shapes, _ROLES["patch"][0]) is not None
    role = {name: patterns[0 if original else 1] for name, patterns in _ROLES.items()}
    hidden, in_channels, patch_size, _ = _require(shapes, role["patch"])
    caption_channels = _require(shapes, role["caption"])[1]
    out_channels = _require(shapes, role["out"])[0] // (patch_size * patch_size)
    ff_channels = _require(shapes, role["ff"])[0]
    cross_heads = _cross_attention_heads(hidden)
    sample_size = _sample_size(shapes.get("pos_embed"), patch_size) if original else _DEFAULT_SAMPLE_SIZE
    return {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "num_attention_heads": hidden // _LINEAR_HEAD_DIM,
        "attention_head_dim": _LINEAR_HEAD_DIM,
        "num_layers": _num_layers(shapes, role["block"]),
        "num_cross_attention_heads": cross_heads,
        "cross_attention_head_dim": hidden // cross_heads,
        "cross_attention_dim": hidden,
        "caption_channels": caption_channels,
        "mlp_ratio": ff_channels / 2 / hidden,
        "attention_bias": False,
        "sample_size": sample_size,
        "patch_size": patch_size,
        "interpolation_scale": sample_size / _PE_BASE_SAMPLE_SIZE if sample_size >= _PE_BASE_SAMPLE_SIZE else None,
        "qk_norm": "rms_norm_across_heads" if _find(shapes, role["qk_norm"]) is not None else None,
        "guidance_embeds": _find(shapes, role["guidance"]) is not None,
        "guidance_embeds_scale": _SPRINT_GUIDANCE_SCALE,
        "timestep_scale": 1.0,
    }


def convert_original_to_diffusers(state_dict: dict, sprint: bool | None = None) -> dict:
    """Original Sana keys -> diffusers keys (fused qkv / kv split); works on meta tensors.

    Keys the map does not know are kept under their own name, so the strict key check reports them. `sprint` None
    tells a Sprint model (whose timestep embedder sits elsewhere) by its cfg_embedder keys; parts of a file (LoRA
    layers) pass it.
    """
    if sprint is None:
        sprint = any(key.startswith("cfg_embedder.") for key in state_dict)
    timestep_prefix = "time_embed.timestep_embedder." if sprint else "time_embed.emb.timestep_embedder."
    top_level = {**_TOP_LEVEL, **{old: timestep_prefix + new for old, new in _TIMESTEP_EMBEDDER.items()}}
    converted = {}
    for key, tensor in state_dict.items():
        if key in _DROPPED:
            continue
        block = _ORIGINAL_BLOCK.fullmatch(key)
        if block:
            converted.update(_convert_block_tensor(int(block[1]), block[2], tensor))
        else:
            converted[_rename(key, top_level) or key] = tensor
    return converted


def sana_variant(config: dict) -> SanaVariant:
    """Name, native size and sampling defaults of a Sana config (4K needs shift 6.0, the others 3.0)."""
    sample_size = config["sample_size"]
    return SanaVariant(
        name=_variant_name(config),
        sample_size=sample_size,
        default_shift=6.0 if sample_size >= 128 else 3.0,
        is_sprint=bool(config["guidance_embeds"]),
        latent_channels=config["in_channels"],
    )


def _read_file(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Config and diffusers-layout weights of one checkpoint file; the family is checked from the header first."""
    name = os.path.basename(path)
    shapes = {k: shape for k, (shape, _) in strip_prefix(checkpoint_keys(path), _FILE_PREFIXES).items()}
    original = require_transformer(shapes, name, "Sana")
    config = sana_config_from_shapes(shapes)
    state_dict = strip_prefix(load_state_dict(path), _FILE_PREFIXES)
    return config, convert_original_to_diffusers(state_dict) if original else state_dict


def _read_folder(folder: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Config and weights of a diffusers model folder, or of the `transformer/` folder of a pipeline."""
    if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isdir(os.path.join(folder, "transformer")):
        folder = os.path.join(folder, "transformer")
    files = weight_files_in_folder(folder, DIFFUSERS_STEM)
    shapes = {k: shape for f in files for k, (shape, _) in checkpoint_keys(f).items()}
    name = os.path.basename(os.path.normpath(folder))
    original = require_transformer(shapes, name, "Sana")
    config_path = os.path.join(folder, "config.json")
    config = read_json(config_path) if os.path.isfile(config_path) else sana_config_from_shapes(shapes)
    class_name = config.get("_class_name", SanaTransformer2DModel.__name__)
    if class_name != SanaTransformer2DModel.__name__:
        raise ValueError(f"'{name}' holds a {class_name}, not a SanaTransformer2DModel.")
    state_dict = load_folder_state_dict(folder, DIFFUSERS_STEM)
    return config, convert_original_to_diffusers(state_dict) if original else state_dict


def _build_model(config: dict, state_dict: dict, dtype: torch.dtype | None, name: str,
                 storage: torch.dtype | None = None) -> SanaTransformer2DModel:
    dtype = dtype or main_dtype(state_dict)
    check = partial(check_converted_layout, family="Sana")
    prepare = storage_preparer(dtype, storage, partial(cast_floats, dtype=dtype))
    model = build_on_meta(SanaTransformer2DModel, config, state_dict, name, check, prepare)
    _materialise_pos_embed(model, dtype)
    return model.eval()


def _materialise_pos_embed(model: SanaTransformer2DModel, dtype: torch.dtype) -> None:
    """Compute the sin-cos PE buffer (never stored in checkpoints) as PatchEmbed does, in the model's dtype."""
    embed = model.patch_embed
    if embed.pos_embed is None:
        return
    pos_embed = get_2d_sincos_pos_embed(
        embed.pos_embed.shape[-1], embed.height, base_size=embed.base_size,
        interpolation_scale=embed.interpolation_scale, device="cpu", output_type="pt",
    )
    embed.pos_embed = pos_embed.float().unsqueeze(0).to(dtype)


def _convert_block_tensor(index: int, rest: str, tensor: torch.Tensor) -> dict:
    prefix = f"transformer_blocks.{index}."
    for old, targets in _FUSED.items():
        if rest.startswith(old):
            parts = tensor.chunk(len(targets), dim=0)
            return {prefix + target + rest[len(old):]: part for target, part in zip(targets, parts)}
    renamed = _rename(rest, _BLOCK)
    return {prefix + renamed if renamed else f"blocks.{index}.{rest}": tensor}


def _rename(key: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if key == old or (old.endswith(".") and key.startswith(old)):
            return new + key[len(old):]
    return None


def _find(shapes: dict, pattern: str) -> tuple[int, ...] | None:
    return next((tuple(shape) for key, shape in shapes.items() if re.fullmatch(pattern, key)), None)


def _require(shapes: dict, pattern: str, family: str = "Sana") -> tuple[int, ...]:
    shape = _find(shapes, pattern)
    if shape is None:
        readable = pattern.replace("\\d+", "N").replace("\\", "")
        raise ValueError(f"Not a complete {family} transformer: no tensor '{readable}'.")
    return shape


def _num_layers(shapes: dict, pattern: str, family: str = "Sana") -> int:
    """Highest block index + 1, so a file missing a whole block shows up as missing keys, not as a shallower model."""
    indices = [int(m[1]) for m in (re.fullmatch(pattern, key) for key in shapes) if m]
    if not indices:
        raise ValueError(f"Not a complete {family} transformer: it has no transformer blocks.")
    return max(indices) + 1


def _cross_attention_heads(hidden: int) -> int:
    if hidden % _LINEAR_HEAD_DIM:
        raise ValueError(f"Unknown Sana width {hidden}: not a multiple of the {_LINEAR_HEAD_DIM}-channel heads.")
    if hidden in _CROSS_HEADS:
        return _CROSS_HEADS[hidden]
    if hidden % _GENERIC_CROSS_HEAD_DIM:
        raise ValueError(
            f"Unknown Sana width {hidden}: its cross-attention heads cannot be told from the weights. Load it from a "
            f"diffusers folder with its config.json."
        )
    return hidden // _GENERIC_CROSS_HEAD_DIM


def _sample_size(pos_embed_shape: tuple[int, ...] | None, patch_size: int) -> int:
    """Original files store the PE of the training grid ([1, tokens, hidden], tokens = grid^2)."""
    if pos_embed_shape is None:
        return _DEFAULT_SAMPLE_SIZE
    grid = int(round(pos_embed_shape[1] ** 0.5))
    if grid * grid != pos_embed_shape[1]:
        raise ValueError(f"The pos_embed of this file ({pos_embed_shape[1]} tokens) is not a square grid.")
    return grid * patch_size


def _variant_name(config: dict) -> str:
    width = config["num_attention_heads"] * config["attention_head_dim"]
    depth, qk_norm, sprint = config["num_layers"], config["qk_norm"] is not None, bool(config["guidance_embeds"])
    size = _SIZES.get((width, depth))
    if size is None:
        traits = "".join(((", QK-norm" if qk_norm else ""), (", Sprint guidance embedder" if sprint else "")))
        name = f"Sana-like transformer ({width} wide, {depth} layers{traits})"
    elif sprint:
        name = f"Sana-Sprint {size}"
    elif qk_norm:
        name = f"Sana 1.5 {size}"
    else:
        name = _BASE_NAMES.get(size, f"Sana {size}")
    return name + _RESOLUTION_SUFFIX.get(config["sample_size"], "")
