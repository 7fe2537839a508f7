"""Loading the Wan VAEs (`diffusers.AutoencoderKLWan`) from any of the layouts they are distributed in.

The Wan2.1 VAE (16 latent channels, every Wan2.1 model and Wan2.2 A14B) and the Wan2.2 VAE (48 channels, residual
up/down blocks, 2x2 patches of pixels: Wan2.2-TI2V-5B) are told apart by their tensors, never by the file name.

Wan-AI's `Wan2.1_VAE.pth` / `Wan2.2_VAE.pth` (plain state dicts, read with weights_only) and Comfy-Org's
`wan_2.1_vae.safetensors` / `wan2.2_vae.safetensors` share the original key names (`decoder.middle.0.residual.0.gamma`,
`encoder.downsamples.N`, `conv1`, `conv2`). diffusers' own `convert_wan_vae_to_diffusers` renames the Wan2.1 ones, so
the two layouts cannot drift apart; it lacks a check that the input is a Wan VAE at all (it passes unknown keys
through), so the family check comes first and a strict key check after. For the Wan2.2 VAE diffusers 0.42 has no
single-file converter (only its conversion script), so its nested down/up blocks are renamed here
(`convert_wan22_vae_to_diffusers`) and the rest goes through diffusers' converter.

A diffusers folder (or a pipeline folder's `vae/`) brings its config.json. A single file brings none: the
architecture is read off the tensor shapes and the latent statistics, which no file carries, are Wan2.1's or
Wan2.2's by the latent channel count.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from ..vae.wan import WAN22_LATENT_CHANNELS, wan_latent_statistics
from .checkpoint import load_folder_state_dict, load_state_dict, read_json, strip_prefix, tensor_shapes
from .detect import require_family
from .meta_build import build_on_meta, cast_floats, check_layout, left_on_meta, stored_dtype

_FAMILY = "Wan VAE"
_WEIGHTS_STEM = "diffusion_pytorch_model"
_LATENT_CHANNELS = (16, WAN22_LATENT_CHANNELS)
# What ComfyUI's comfy/sd.py looks for to tell the Wan2.2 VAE (residual up-blocks) from the Wan2.1 one, and the
# same blocks in the diffusers layout.
_WAN22_ORIGINAL_KEY = "decoder.upsamples.0.upsamples.0.residual.2.weight"
_WAN22_KEYS = (_WAN22_ORIGINAL_KEY, "encoder.down_blocks.0.resnets.0.conv1.weight")


def load_wan_vae(path: str, dtype: torch.dtype | None = None) -> AutoencoderKLWan:
    """A ready Wan2.1 or Wan2.2 VAE in eval mode on the CPU, in `dtype` (default: the file's own float dtype, else
    float32).

    `path` is a diffusers folder, a pipeline folder with `vae/`, a diffusers-layout file, the original
    `Wan2.1_VAE.pth` / `Wan2.2_VAE.pth` or Comfy-Org's `wan_2.1_vae.safetensors` / `wan2.2_vae.safetensors`.
    Another model family or another architecture raises ValueError.
    """
    name = os.path.basename(os.path.normpath(path))
    config, state_dict = _read_folder(path) if os.path.isdir(path) else _read_file(path)
    return _build(config, state_dict, dtype, name)


def _read_folder(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = os.path.join(path, "vae") if os.path.isdir(os.path.join(path, "vae")) else path
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"The folder '{folder}' has no config.json: pass the .safetensors or .pth file itself.")
    config = read_json(config_path)
    name = os.path.basename(os.path.normpath(path))
    if config.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan":
        raise ValueError(f"The folder '{folder}' holds a {config['_class_name']}, not the Wan VAE (AutoencoderKLWan).")
    state_dict = load_folder_state_dict(folder, _WEIGHTS_STEM)
    _check_family(state_dict, name)
    return config, state_dict


def _read_file(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    state_dict = strip_prefix(load_state_dict(path), ("vae.",))
    _check_family(state_dict, os.path.basename(path))
    if _WAN22_ORIGINAL_KEY in state_dict:
        state_dict = convert_wan22_vae_to_diffusers(state_dict)
    elif "decoder.middle.0.residual.0.gamma" in state_dict:
        state_dict = convert_wan_vae_to_diffusers(state_dict)
    return infer_wan_vae_config(tensor_shapes(state_dict)), state_dict


def _check_family(state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    require_family(state_dict.keys(), _FAMILY, lambda family: (
        f"'{name}' is not a Wan VAE (detected: {family}); pick the Wan2.1 or Wan2.2 VAE file in this loader."))
    latent = state_dict.get("conv2.weight", state_dict.get("post_quant_conv.weight"))
    channels = latent.shape[0] if latent is not None else None
    if channels not in (None, *_LATENT_CHANNELS):
        raise ValueError(f"'{name}' has {channels} latent channels; the Wan2.1 VAE has 16, the Wan2.2 VAE 48.")


def _build(config: dict, state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None,
           name: str) -> AutoencoderKLWan:
    state_dict = cast_floats(state_dict, dtype or stored_dtype(state_dict))
    vae = build_on_meta(AutoencoderKLWan, config, state_dict, name, check_wan_vae_layout)
    # AutoencoderKLWan has no buffers today; one added by a later diffusers would stay on meta, unusable.
    unset = left_on_meta(vae)
    if unset:
        raise ValueError(f"'{name}' leaves {len(unset)} tensors of the Wan VAE unset ({unset[0]}).")
    return vae.eval().requires_grad_(False)


def check_wan_vae_layout(vae: AutoencoderKLWan, shapes: Mapping[str, Sequence[int]], name: str) -> None:
    """Raise ValueError unless `shapes` fills every tensor of `vae` with its exact shape, and nothing else."""
    check_layout(vae, shapes, name, "Wan VAE")


# ---------------------------------------------------------------------------------------------- config from shapes

_DOWN_BLOCK = re.compile(r"^encoder\.down_blocks\.(\d+)\.(.+)$")
_RESIDUAL_DOWN = re.compile(r"^encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)\.conv1|downsampler\.(resample\.1|time_conv))"
                            r"\.weight$")
_RGB_PATCH = 2  # the Wan2.2 VAE folds 2x2 pixels of 3 channels into 12 before its encoder


def infer_wan_vae_config(shapes: Mapping[str, Sequence[int]]) -> dict:
    """The AutoencoderKLWan arguments that reproduce these diffusers-layout tensor shapes, for a Wan VAE.

    The Wan2.1 encoder is one flat list of residual blocks (`conv1`), attention blocks (`to_qkv`) and resamplers
    (`resample.1`, plus `time_conv` when they also halve time); each resampler ends a level. The Wan2.2 encoder
    nests each level's `resnets` and `downsampler`, and works on 2x2 patches of pixels (12 input channels for RGB),
    which doubles the spatial compression. A level's residual width over the base width is its `dim_mult`; a level
    with attention is at scale 1/2^level. The latent statistics follow the latent channel count: no file carries
    them.
    """
    base_dim, in_channels = _shape(shapes, "encoder.conv_in.weight")[:2]
    residual = any(key in shapes for key in _WAN22_KEYS)
    levels = _residual_levels(shapes) if residual else _encoder_levels(shapes)
    res_blocks = {level["res_blocks"] for level in levels}
    if len(res_blocks) != 1 or any(level["width"] % base_dim for level in levels):
        raise ValueError("The Wan VAE's encoder levels differ in depth or width pattern; AutoencoderKLWan cannot "
                         "build it from a single file: load its diffusers folder with config.json.")
    dim_mult = [level["width"] // base_dim for level in levels]
    decoder_width = _shape(shapes, "decoder.conv_out.weight")[1]
    z_dim = _shape(shapes, "post_quant_conv.weight")[0]
    mean, std = wan_latent_statistics(z_dim)
    patch = {"is_residual": True, "patch_size": _RGB_PATCH, "scale_factor_spatial": 2 ** len(levels[:-1]) * _RGB_PATCH}
    return {
        "base_dim": base_dim,
        "decoder_base_dim": None if decoder_width == base_dim * dim_mult[0] else decoder_width // dim_mult[0],
        "z_dim": z_dim,
        "dim_mult": dim_mult,
        "num_res_blocks": res_blocks.pop(),
        "attn_scales": [1.0 / 2**i for i, level in enumerate(levels) if level["attention"]],
        "temperal_downsample": [level["temporal"] for level in levels[:-1]],
        "in_channels": in_channels,
        "out_channels": _shape(shapes, "decoder.conv_out.weight")[0],
        "latents_mean": list(mean),
        "latents_std": list(std),
        **(patch if residual else {}),
    }


def _shape(shapes: Mapping[str, Sequence[int]], key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"This Wan VAE file is incomplete: '{key}' is missing.")
    return tuple(shapes[key])


def _encoder_levels(shapes: Mapping[str, Sequence[int]]) -> list[dict]:
    """Per encoder level: residual width, residual block count, attention, temporal downsampling at its end."""
    blocks: dict[int, dict[str, tuple]] = {}
    for key, shape in shapes.items():
        if m := _DOWN_BLOCK.match(key):
            blocks.setdefault(int(m[1]), {})[m[2]] = tuple(shape)
    if not blocks:
        raise ValueError("This file has no Wan VAE encoder blocks ('encoder.down_blocks.N.*'), so it is not a Wan VAE.")
    levels = [{"width": 0, "res_blocks": 0, "attention": False, "temporal": False}]
    for index in sorted(blocks):
        block, level = blocks[index], levels[-1]
        if "conv1.weight" in block:
            level["width"], level["res_blocks"] = block["conv1.weight"][0], level["res_blocks"] + 1
        elif "to_qkv.weight" in block:
            level["attention"] = True
        elif "resample.1.weight" in block:
            level["temporal"] = "time_conv.weight" in block
            levels.append({"width": 0, "res_blocks": 0, "attention": False, "temporal": False})
    return levels


def _residual_levels(shapes: Mapping[str, Sequence[int]]) -> list[dict]:
    """As `_encoder_levels`, for the Wan2.2 layout (`down_blocks.N.resnets.M`, `down_blocks.N.downsampler`)."""
    levels: dict[int, dict] = {}
    for key, shape in shapes.items():
        if m := _RESIDUAL_DOWN.match(key):
            level = levels.setdefault(int(m[1]), {"width": 0, "res_blocks": 0, "attention": False, "temporal": False})
            if m[3] is not None:
                level["width"], level["res_blocks"] = shape[0], max(level["res_blocks"], int(m[3]) + 1)
            elif m[4] == "time_conv":
                level["temporal"] = True
    if not levels:
        raise ValueError("This file has no Wan VAE encoder blocks ('encoder.down_blocks.N.*'), so it is not a Wan VAE.")
    return [levels[index] for index in sorted(levels)]


# ---------------------------------------------------------------------------------------------- Wan2.2 layout

_NESTED = re.compile(r"^(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.(?:downsamples|upsamples)\.(\d+)\.(.+)$")
_RESIDUAL_NAMES = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.", "residual.6.": "conv2.",
                   "shortcut.": "conv_shortcut."}


def convert_wan22_vae_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Wan2.2 VAE keys -> diffusers keys, as diffusers' scripts/convert_wan_to_diffusers.py
    (`convert_vae_22`) renames them: each level's `downsamples.M` / `upsamples.M` are its residual blocks
    (`resnets.M`), the last one, when it resamples, its `downsampler` / `upsampler`. The middle blocks, heads and
    the 1x1 convolutions are named as in the Wan2.1 VAE, so diffusers' Wan2.1 converter renames those.
    """
    nested, rest = {}, {}
    for key, value in state_dict.items():
        m = _NESTED.match(key)
        if m is None:
            rest[key] = value
            continue
        side, level, index, tail = m.groups()
        prefix = f"{'encoder.down_blocks' if side.startswith('encoder') else 'decoder.up_blocks'}.{level}"
        name = next((n for n in _RESIDUAL_NAMES if tail.startswith(n)), None)
        if name is not None:
            nested[f"{prefix}.resnets.{index}.{_RESIDUAL_NAMES[name]}{tail[len(name):]}"] = value
        else:  # resample.* / time_conv.*
            nested[f"{prefix}.{'downsampler' if side.startswith('encoder') else 'upsampler'}.{tail}"] = value
    return {**convert_wan_vae_to_diffusers(rest), **nested}
