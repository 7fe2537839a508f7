"""Sana-Video transformer files (NVlabs original `.pth` / `.safetensors`, ComfyUI-prefixed, diffusers) ->
`SanaVideoTransformer3DModel`.

The original layout is Sana's (fused qkv, `t_block`, `final_layer` ...) plus a 3-D patch embedding and a temporal
convolution in each feed-forward (`mlp.t_conv`), so the Sana key map does most of the work and the two video keys
are renamed after it (as diffusers' scripts/convert_sana_video_to_diffusers.py maps them). The architecture is read
from the tensors, as for Sana.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import partial

import torch
from diffusers import SanaVideoTransformer3DModel

from .checkpoint import (
    checkpoint_keys, load_folder_state_dict, load_state_dict, read_json, strip_prefix, weight_files_in_folder,
)
from .detect import require_transformer
from .meta_build import build_on_meta, cast_floats, check_converted_layout, main_dtype
from .sana_transformer import DIFFUSERS_STEM, _find, _num_layers, _require, convert_original_to_diffusers
from .storage import storage_preparer

_FAMILY = "Sana-Video"
_FILE_PREFIXES = ("model.diffusion_model.",)

# Released Sana-Video widths -> heads (2B: 20 x 112, for the linear self-attention and the cross-attention alike;
# diffusers' conversion script). The head count leaves no trace in the weight shapes (the QK norms span all heads),
# so other widths are taken to use 32-channel heads, the rule the tiny test models follow.
_HEADS = {2240: 20}
_GENERIC_HEAD_DIM = 32

# The latent space this pack samples in: the Wan2.1 VAE's 16 channels, 8x spatial, through 2x2 patches (480p).
# The 720p release works on 1x1 patches of a 32x VAE (diffusers pairs it with the LTX-2 video VAE).
WAN21_CHANNELS = 16
_WAN_PATCH = (1, 2, 2)
# diffusers' resolution-bin switch: sample_size 30 is the 480p model, 22 the 720p one (pipeline_sana_video.py).
_SAMPLE_SIZE = {(1, 2, 2): 30, (1, 1, 1): 22}
# Sana-Video's training flow shift, the released schedulers' (convert_sana_video_to_diffusers.py: flow_shift 8.0).
DEFAULT_SHIFT = 8.0

# The temporal convolution, which the Sana map leaves under its own name.
_LEFT_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.mlp\.t_conv\.(.+)")

# role -> diffusers-layout key pattern, matched in full (original files are converted before the shapes are read).
_ROLES = {
    "patch": r"patch_embedding\.weight",
    "caption": r"caption_projection\.linear_1\.weight",
    "out": r"proj_out\.weight",
    "ff": r"transformer_blocks\.\d+\.ff\.conv_inverted\.weight",
    "qk_norm": r"transformer_blocks\.\d+\.attn1\.norm_q\.weight",
    "attention_bias": r"transformer_blocks\.\d+\.attn1\.to_q\.bias",
    "guidance": r"time_embed\.guidance_embedder\..+",
    "block": r"transformer_blocks\.(\d+)\..+",
}


@dataclass(frozen=True)
class SanaVideoVariant:
    """What the sampler and the UI need to know about a loaded Sana-Video transformer beyond its weights."""

    name: str
    default_shift: float
    latent_channels: int


def load_sana_video_transformer(path: str, dtype: torch.dtype | None = None, storage: torch.dtype | None = None
                                ) -> tuple[SanaVideoTransformer3DModel, SanaVideoVariant]:
    """A Sana-Video transformer from a checkpoint file or a diffusers (model or pipeline) folder.

    `dtype` None keeps the dtype most of the weights have; `storage` (fp8 / bf16) holds the Linear / Conv weights in
    that dtype, computed in `dtype` (loaders/storage.py).
    """
    name = os.path.basename(os.path.normpath(path))
    config, state_dict = _read_folder(path) if os.path.isdir(path) else _read_file(path)
    dtype = dtype or main_dtype(state_dict)
    check = partial(check_converted_layout, family=_FAMILY)
    prepare = storage_preparer(dtype, storage, partial(cast_floats, dtype=dtype))
    model = build_on_meta(SanaVideoTransformer3DModel, config, state_dict, name, check, prepare)
    _materialise_rope(model)
    return model.eval(), sana_video_variant(dict(model.config))


def convert_original_to_diffusers_video(state_dict: dict) -> dict:
    """NVlabs Sana-Video keys -> diffusers keys; works on meta tensors."""
    converted = {}
    for key, tensor in convert_original_to_diffusers(state_dict, sprint=False).items():
        left = _LEFT_BLOCK_KEY.fullmatch(key)
        if left:
            key = f"transformer_blocks.{left[1]}.ff.conv_temp.{left[2]}"
        elif key.startswith("patch_embed.proj."):
            key = "patch_embedding." + key[len("patch_embed.proj."):]
        converted[key] = tensor
    return converted


def sana_video_config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict:
    """The `SanaVideoTransformer3DModel` config of a diffusers-layout state dict, from key shapes alone."""
    hidden, in_channels, *patch = _require(shapes, _ROLES["patch"], _FAMILY)
    patch_size = tuple(patch)
    heads = _heads(hidden)
    return {
        "in_channels": in_channels,
        "out_channels": _require(shapes, _ROLES["out"], _FAMILY)[0] // math.prod(patch_size),
        "num_attention_heads": heads,
        "attention_head_dim": hidden // heads,
        "num_layers": _num_layers(shapes, _ROLES["block"], _FAMILY),
        "num_cross_attention_heads": heads,
        "cross_attention_head_dim": hidden // heads,
        "cross_attention_dim": hidden,
        "caption_channels": _require(shapes, _ROLES["caption"], _FAMILY)[1],
        "mlp_ratio": _require(shapes, _ROLES["ff"], _FAMILY)[0] / 2 / hidden,
        "attention_bias": _find(shapes, _ROLES["attention_bias"]) is not None,
        "sample_size": _SAMPLE_SIZE.get(patch_size, 30),
        "patch_size": patch_size,
        "qk_norm": "rms_norm_across_heads" if _find(shapes, _ROLES["qk_norm"]) is not None else None,
        "guidance_embeds": _find(shapes, _ROLES["guidance"]) is not None,
    }


def sana_video_variant(config: dict) -> SanaVideoVariant:
    width = config["num_attention_heads"] * config["attention_head_dim"]
    if (width, config["num_layers"]) == (2240, 20):
        name = "Sana-Video 2B 480p"
    else:
        name = f"Sana-Video-like transformer ({width} wide, {config['num_layers']} layers)"
    return SanaVideoVariant(name=name, default_shift=DEFAULT_SHIFT, latent_channels=config["in_channels"])


def _read_file(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    name = os.path.basename(path)
    shapes = {k: shape for k, (shape, _) in strip_prefix(checkpoint_keys(path), _FILE_PREFIXES).items()}
    original = require_transformer(shapes, name, _FAMILY)
    if original:  # converted as meta tensors, since the fused projections are split by shape
        meta = {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}
        shapes = {k: tuple(t.shape) for k, t in convert_original_to_diffusers_video(meta).items()}
    config = sana_video_config_from_shapes(shapes)
    _require_wan_latents(config, name)
    state_dict = strip_prefix(load_state_dict(path), _FILE_PREFIXES)
    return config, convert_original_to_diffusers_video(state_dict) if original else state_dict


def _read_folder(folder: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Config and weights of a diffusers model folder, or of the `transformer/` folder of a pipeline."""
    if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isdir(os.path.join(folder, "transformer")):
        folder = os.path.join(folder, "transformer")
    name = os.path.basename(os.path.normpath(folder))
    config_path = os.path.join(folder, "config.json")
    config = read_json(config_path) if os.path.isfile(config_path) else None
    class_name = (config or {}).get("_class_name", SanaVideoTransformer3DModel.__name__)
    if class_name == "SanaVideoCausalTransformer3DModel":
        raise ValueError(f"'{name}' is the causal (LongLive, autoregressive) Sana-Video transformer; it needs "
                         "block-causal sampling with a KV cache, which this pack does not do. Use SANA-Video_2B_480p.")
    if class_name != SanaVideoTransformer3DModel.__name__:
        raise ValueError(f"'{name}' holds a {class_name}, not a SanaVideoTransformer3DModel.")
    files = weight_files_in_folder(folder, DIFFUSERS_STEM)
    shapes = {k: shape for f in files for k, (shape, _) in checkpoint_keys(f).items()}
    require_transformer(shapes, name, _FAMILY)
    config = config or sana_video_config_from_shapes(shapes)
    _require_wan_latents(config, name)
    return config, load_folder_state_dict(folder, DIFFUSERS_STEM)


def _require_wan_latents(config: dict, name: str) -> None:
    """Checked before the weights are read: a 720p file is refused at once."""
    patch = tuple(config["patch_size"]) if isinstance(config["patch_size"], (list, tuple)) else None
    if config["in_channels"] != WAN21_CHANNELS or patch != _WAN_PATCH:
        raise ValueError(
            f"'{name}' samples {config['in_channels']}-channel latents in {patch} patches; this pack runs Sana-Video "
            f"in the Wan2.1 VAE's {WAN21_CHANNELS}-channel latents with {_WAN_PATCH} patches (SANA-Video_2B_480p). "
            "The 720p release uses 1x1 patches over the LTX-2 video VAE, which this pack does not load yet."
        )


def _materialise_rope(model: SanaVideoTransformer3DModel) -> None:
    """The RoPE tables are buffers no file holds: rebuild that module off the meta device, from the config."""
    rope = model.rope
    model.rope = type(rope)(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)


def _heads(hidden: int) -> int:
    if hidden in _HEADS:
        return _HEADS[hidden]
    if hidden % _GENERIC_HEAD_DIM:
        raise ValueError(f"Unknown Sana-Video width {hidden}: its attention heads cannot be told from the weights. "
                         "Load it from a diffusers folder with its config.json.")
    return hidden // _GENERIC_HEAD_DIM
