"""Loading the Wan2.1 VAE (`diffusers.AutoencoderKLWan`) from any of the layouts it is distributed in.

Wan-AI's `Wan2.1_VAE.pth` (a plain state dict, read with weights_only) and Comfy-Org's `wan_2.1_vae.safetensors`
(fp16) share the original key names (`decoder.middle.0.residual.0.gamma`, `encoder.downsamples.N`, `conv1`,
`conv2`); diffusers' own `convert_wan_vae_to_diffusers` renames them, so the two layouts cannot drift apart. It
maps every key of the real files; what it lacks is a check that the input is the Wan2.1 VAE at all (it passes
unknown keys through), so the family and Wan2.2 checks below come first and a strict key check comes after.

A diffusers folder (or a pipeline folder's `vae/`) brings its config.json. A single file brings none: the
architecture is read off the tensor shapes and the latent statistics, which no file carries, are Wan2.1's.
The Wan2.2 VAE (48 latent channels, Wan2.2-TI2V-5B) shares the original key names and is refused by name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from ..vae.wan import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD
from .checkpoint import load_folder_state_dict, load_state_dict, read_json, strip_prefix, tensor_shapes
from .detect import require_family
from .meta_build import build_on_meta, cast_floats, check_layout, left_on_meta, stored_dtype

_FAMILY = "Wan VAE"
_WEIGHTS_STEM = "diffusion_pytorch_model"
_LATENT_CHANNELS = 16
# What ComfyUI's comfy/sd.py looks for to tell the Wan2.2 VAE (residual up-blocks) from the Wan2.1 one; the
# diffusers layout of the same blocks nests its resnets one level deeper.
_WAN22_KEYS = ("decoder.upsamples.0.upsamples.0.residual.2.weight", "encoder.down_blocks.0.resnets.0.conv1.weight")
_WAN22_MESSAGE = ("is the Wan2.2 VAE (48 latent channels); Wan2.1 models need the Wan2.1 VAE "
                  "(wan_2.1_vae.safetensors)")


def load_wan_vae(path: str, dtype: torch.dtype | None = None) -> AutoencoderKLWan:
    """A ready Wan2.1 VAE in eval mode on the CPU, in `dtype` (default: the file's own float dtype, else float32).

    `path` is a diffusers folder, a pipeline folder with `vae/`, a diffusers-layout file, the original
    `Wan2.1_VAE.pth` or Comfy-Org's `wan_2.1_vae.safetensors`. Another model family, the Wan2.2 VAE or another
    architecture raises ValueError.
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
    if config.get("z_dim") == 48 or config.get("is_residual"):
        raise ValueError(f"'{name}' {_WAN22_MESSAGE}.")
    state_dict = load_folder_state_dict(folder, _WEIGHTS_STEM)
    _check_family(state_dict, name)
    return config, state_dict


def _read_file(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    state_dict = strip_prefix(load_state_dict(path), ("vae.",))
    _check_family(state_dict, os.path.basename(path))
    if "decoder.middle.0.residual.0.gamma" in state_dict:
        state_dict = convert_wan_vae_to_diffusers(state_dict)
    return infer_wan_vae_config(tensor_shapes(state_dict)), state_dict


def _check_family(state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    require_family(state_dict.keys(), _FAMILY, lambda family: (
        f"'{name}' is not a Wan VAE (detected: {family}); pick the Wan2.1 VAE file in this loader."))
    latent = state_dict.get("conv2.weight", state_dict.get("post_quant_conv.weight"))
    channels = latent.shape[0] if latent is not None else None
    if channels == 48 or any(key in state_dict for key in _WAN22_KEYS):
        raise ValueError(f"'{name}' {_WAN22_MESSAGE}.")
    if channels not in (None, _LATENT_CHANNELS):
        raise ValueError(f"'{name}' has {channels} latent channels; the Wan2.1 VAE has {_LATENT_CHANNELS}.")


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


def infer_wan_vae_config(shapes: Mapping[str, Sequence[int]]) -> dict:
    """The AutoencoderKLWan arguments that reproduce these diffusers-layout tensor shapes, for a Wan2.1-family VAE.

    The encoder is one flat list of residual blocks (`conv1`), attention blocks (`to_qkv`) and resamplers
    (`resample.1`, plus `time_conv` when they also halve time); each resampler ends a level. A level's residual
    width over the base width is its `dim_mult`; a level with attention is at scale 1/2^level. The latent
    statistics are Wan2.1's: no file carries them.
    """
    base_dim = _shape(shapes, "encoder.conv_in.weight")[0]
    levels = _encoder_levels(shapes)
    res_blocks = {level["res_blocks"] for level in levels}
    if len(res_blocks) != 1 or any(level["width"] % base_dim for level in levels):
        raise ValueError("The Wan VAE's encoder levels differ in depth or width pattern; AutoencoderKLWan cannot "
                         "build it from a single file: load its diffusers folder with config.json.")
    dim_mult = [level["width"] // base_dim for level in levels]
    decoder_width = _shape(shapes, "decoder.conv_out.weight")[1]
    return {
        "base_dim": base_dim,
        "decoder_base_dim": None if decoder_width == base_dim * dim_mult[0] else decoder_width // dim_mult[0],
        "z_dim": _shape(shapes, "post_quant_conv.weight")[0],
        "dim_mult": dim_mult,
        "num_res_blocks": res_blocks.pop(),
        "attn_scales": [1.0 / 2**i for i, level in enumerate(levels) if level["attention"]],
        "temperal_downsample": [level["temporal"] for level in levels[:-1]],
        "in_channels": _shape(shapes, "encoder.conv_in.weight")[1],
        "out_channels": _shape(shapes, "decoder.conv_out.weight")[0],
        "latents_mean": list(WAN21_LATENTS_MEAN),
        "latents_std": list(WAN21_LATENTS_STD),
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
