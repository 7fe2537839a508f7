"""Sana ControlNet files (original NVlabs `.pth` / `.safetensors`, diffusers folder or single file) ->
`diffusers.SanaControlNetModel`.

The original release (e.g. `Sana_1600M_1024px_BF16_ControlNet_HED.pth`) is the whole `SanaMSControlNet`: the base
transformer (`blocks.*`, `final_layer.*`) plus `controlnet.{i}.copied_block.*`, `controlnet.0.before_proj` and
`controlnet.{i}.after_proj`. As diffusers' `scripts/convert_sana_controlnet_to_diffusers.py` does, the ControlNet
takes the file's embedders and its copied blocks; the base blocks are left out, the ControlNet then drives the
transformer the user loads. The copied blocks are Sana blocks, renamed by the transformer loader's own map.
"""

from __future__ import annotations

import os
import re

import torch
from diffusers import SanaControlNetModel

from .checkpoint import checkpoint_keys, load_folder_state_dict, load_state_dict, read_json, strip_prefix
from .detect import detect_family
from .meta_build import build_on_meta, cast_floats, check_layout, main_dtype
from .sana_transformer import (
    _DEFAULT_SAMPLE_SIZE, _LINEAR_HEAD_DIM, _PE_BASE_SAMPLE_SIZE, _cross_attention_heads, _materialise_pos_embed,
    _sample_size, convert_original_to_diffusers,
)

FAMILY = "Sana ControlNet"
DIFFUSERS_STEM = "diffusion_pytorch_model"
_FILE_PREFIXES = ("model.diffusion_model.",)
_ORIGINAL_MARKER = "controlnet.0.before_proj.weight"

# original ControlNet key -> the name the Sana transformer map (or SanaControlNetModel itself) knows.
_CONTROLNET_KEYS = (
    (re.compile(r"controlnet\.(\d+)\.copied_block\.(.+)"), r"blocks.\1.\2"),
    (re.compile(r"controlnet\.0\.before_proj\.(.+)"), r"input_block.\1"),
    (re.compile(r"controlnet\.(\d+)\.after_proj\.(.+)"), r"controlnet_blocks.\1.\2"),
)
# The base transformer inside an original file: not part of the ControlNet.
_BASE_ONLY = re.compile(r"(blocks\.\d+|final_layer)\..+")

_SIZES = {1152: "600M", 2240: "1600M"}


def load_sana_controlnet(path: str, dtype: torch.dtype | None = None) -> tuple[SanaControlNetModel, str]:
    """(the ControlNet in eval mode on the CPU, a readable name such as "Sana 1600M ControlNet (7 blocks)").

    `path`: an original file, a diffusers single file, a diffusers model folder or a pipeline folder with
    `controlnet/`. `dtype` None keeps the dtype most of the file's weights have.
    """
    name = os.path.basename(os.path.normpath(path))
    config, state_dict = _read_folder(path, name) if os.path.isdir(path) else _read_file(path, name)
    dtype = dtype or main_dtype(state_dict)
    state_dict = cast_floats(state_dict, dtype)
    architecture = f"{FAMILY} ({config['num_layers']} blocks)"
    model = build_on_meta(SanaControlNetModel, config, state_dict, name,
                          lambda m, shapes, n: check_layout(m, shapes, n, architecture))
    _materialise_pos_embed(model, dtype)
    return model.eval().requires_grad_(False), controlnet_name(dict(model.config))


def controlnet_layout(state_dict: dict) -> tuple[dict, dict]:
    """(config, SanaControlNetModel-layout state dict) of one file's tensors in either layout; works on meta tensors.

    The original layout stores the PE of its training grid, which says whether it is a 2K / 4K model.
    """
    if _ORIGINAL_MARKER not in state_dict:
        return controlnet_config_from_shapes(_shapes(state_dict)), state_dict
    pos_embed, patch = state_dict.get("pos_embed"), state_dict.get("x_embedder.proj.weight")
    sample_size = _sample_size(None if pos_embed is None else tuple(pos_embed.shape),
                               1 if patch is None else patch.shape[-1])
    converted = convert_original_controlnet(state_dict)
    return controlnet_config_from_shapes(_shapes(converted), sample_size), converted


def convert_original_controlnet(state_dict: dict) -> dict:
    """Original (NVlabs SanaMSControlNet) keys -> SanaControlNetModel keys; works on meta tensors.

    Keys the map does not know are kept under their own name, so the strict key check reports them.
    """
    renamed = {}
    for key, tensor in state_dict.items():
        for pattern, replacement in _CONTROLNET_KEYS:
            if pattern.fullmatch(key):
                renamed[pattern.sub(replacement, key)] = tensor
                break
        else:
            if not _BASE_ONLY.fullmatch(key):
                renamed[key] = tensor
    return convert_original_to_diffusers(renamed)


def controlnet_config_from_shapes(shapes: dict[str, tuple[int, ...]], sample_size: int = _DEFAULT_SAMPLE_SIZE) -> dict:
    """The `SanaControlNetModel` config of diffusers-layout shapes (as the transformer loader infers its own).

    `sample_size` comes from the original file's `pos_embed` (2K / 4K use sin-cos PE); diffusers files without a
    config.json are taken to be 512 / 1024 px models (no PE).
    """
    hidden, in_channels, patch_size, _ = _require(shapes, "patch_embed.proj.weight")
    blocks = [int(m[1]) for m in (re.fullmatch(r"transformer_blocks\.(\d+)\..+", k) for k in shapes) if m]
    if not blocks:
        raise ValueError("Not a complete Sana ControlNet: it has no transformer blocks.")
    cross_heads = _cross_attention_heads(hidden)
    return {
        "in_channels": in_channels,
        "out_channels": in_channels,
        "num_attention_heads": hidden // _LINEAR_HEAD_DIM,
        "attention_head_dim": _LINEAR_HEAD_DIM,
        "num_layers": max(blocks) + 1,
        "num_cross_attention_heads": cross_heads,
        "cross_attention_head_dim": hidden // cross_heads,
        "cross_attention_dim": hidden,
        "caption_channels": _require(shapes, "caption_projection.linear_1.weight")[1],
        "mlp_ratio": _require(shapes, "transformer_blocks.0.ff.conv_inverted.weight")[0] / 2 / hidden,
        "attention_bias": False,
        "sample_size": sample_size,
        "patch_size": patch_size,
        "interpolation_scale": sample_size / _PE_BASE_SAMPLE_SIZE if sample_size >= _PE_BASE_SAMPLE_SIZE else None,
    }


def controlnet_name(config: dict) -> str:
    width = config["num_attention_heads"] * config["attention_head_dim"]
    size = _SIZES.get(width, f"{width}-wide")
    layers = config["num_layers"]
    return f"Sana {size} ControlNet ({layers} block{'' if layers == 1 else 's'})"


def require_controlnet(keys, name: str) -> None:
    """Refuse a file that is not a Sana ControlNet, naming what it is."""
    family = detect_family(keys)
    if family == "unknown model":
        raise ValueError(f"'{name}' is not a Sana ControlNet: its tensor names match no known model.")
    if family != FAMILY:
        raise ValueError(f"'{name}' is a {family}, not a Sana ControlNet; load it with the matching loader, and "
                         f"put a Sana ControlNet (e.g. Sana_1600M_1024px_BF16_ControlNet_HED.pth) in this one.")


def _read_file(path: str, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    shapes = {k: shape for k, (shape, _) in strip_prefix(checkpoint_keys(path), _FILE_PREFIXES).items()}
    require_controlnet(shapes, name)
    return controlnet_layout(strip_prefix(load_state_dict(path), _FILE_PREFIXES))


def _read_folder(folder: str, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """A diffusers model folder, or the `controlnet/` folder of a pipeline."""
    if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isdir(os.path.join(folder, "controlnet")):
        folder = os.path.join(folder, "controlnet")
    state_dict = load_folder_state_dict(folder, DIFFUSERS_STEM)
    require_controlnet(state_dict.keys(), name)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        return controlnet_layout(state_dict)
    config = read_json(config_path)
    class_name = config.get("_class_name", SanaControlNetModel.__name__)
    if class_name != SanaControlNetModel.__name__:
        raise ValueError(f"'{name}' holds a {class_name}, not a SanaControlNetModel.")
    return config, state_dict


def _shapes(state_dict: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def _require(shapes: dict, key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"Not a complete Sana ControlNet: no tensor '{key}'.")
    return tuple(shapes[key])
