"""Loading Sana's DC-AE autoencoder (`diffusers.AutoencoderDC`) from any of the layouts it is distributed in.

A diffusers folder (or a pipeline folder's `vae/`) brings its config.json. A single file brings none, so the
architecture is read off the tensor shapes; the original mit-han-lab layout is first renamed by diffusers' own
converter, so the two layouts cannot drift apart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import torch
from diffusers import AutoencoderDC
from diffusers.loaders.single_file_utils import convert_autoencoder_dc_checkpoint_to_diffusers

from .checkpoint import load_folder_state_dict, load_state_dict, read_json, strip_prefix, tensor_shapes
from .detect import require_family
from .meta_build import build_on_meta, cast_floats, check_layout, stored_dtype

# Latent scale of dc-ae-f32c32-sana-1.0/1.1 (their config.json); single files do not carry it.
SANA_SCALING_FACTOR = 0.41407

_FAMILY = "DC-AE VAE"
_WEIGHTS_STEM = "diffusion_pytorch_model"
_RESBLOCK, _VIT = "ResBlock", "EfficientViTBlock"


def load_dcae(path: str, dtype: torch.dtype | None = None) -> AutoencoderDC:
    """A ready DC-AE in eval mode on the CPU, in `dtype` (default: the file's own float dtype, else float32).

    `path` is a diffusers folder, a pipeline folder with `vae/`, a diffusers-layout file or the original
    mit-han-lab `model.safetensors`. A file of another model family or of another architecture raises ValueError.
    """
    name = os.path.basename(os.path.normpath(path))
    config, state_dict = _read_folder(path) if os.path.isdir(path) else _read_file(path)
    return _build(config, state_dict, dtype, name)


def _read_folder(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = os.path.join(path, "vae") if os.path.isdir(os.path.join(path, "vae")) else path
    has_weights = any(n.startswith(_WEIGHTS_STEM) for n in os.listdir(folder))
    if not has_weights and os.path.isfile(os.path.join(folder, "model.safetensors")):
        return _read_file(os.path.join(folder, "model.safetensors"))
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"The folder '{folder}' has no config.json: pass the .safetensors file itself instead.")
    state_dict = load_folder_state_dict(folder, _WEIGHTS_STEM)
    _check_family(state_dict, os.path.basename(os.path.normpath(path)))
    config = read_json(config_path)
    if config.get("_class_name", "AutoencoderDC") != "AutoencoderDC":
        raise ValueError(f"The folder '{folder}' holds a {config['_class_name']}, not a DC-AE (AutoencoderDC).")
    config.setdefault("scaling_factor", SANA_SCALING_FACTOR)
    return config, state_dict


def _read_file(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    state_dict = strip_prefix(load_state_dict(path), ("vae.",))
    _check_family(state_dict, os.path.basename(path))
    if any(k.startswith(("encoder.stages.", "decoder.stages.")) for k in state_dict):
        state_dict = convert_autoencoder_dc_checkpoint_to_diffusers(state_dict)
    config = infer_dcae_config(tensor_shapes(state_dict))
    config["scaling_factor"] = SANA_SCALING_FACTOR
    return config, state_dict


def _check_family(state_dict: Mapping, name: str) -> None:
    require_family(state_dict.keys(), _FAMILY, lambda family: (
        f"'{name}' is not a DC-AE VAE (detected: {family}); pick Sana's DC-AE file in this loader."))


def _build(config: dict, state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None, name: str) -> AutoencoderDC:
    state_dict = cast_floats(state_dict, dtype or stored_dtype(state_dict))
    vae = build_on_meta(AutoencoderDC, config, state_dict, name, check_dcae_layout)
    return vae.eval().requires_grad_(False)


def check_dcae_layout(vae: AutoencoderDC, shapes: Mapping[str, Sequence[int]], name: str) -> None:
    """Raise ValueError unless `shapes` fills every tensor of `vae` with its exact shape, and nothing else."""
    check_layout(vae, shapes, name, "DC-AE")


# ---------------------------------------------------------------------------------------------- config from shapes


def infer_dcae_config(shapes: Mapping[str, Sequence[int]]) -> dict:
    """The AutoencoderDC arguments that reproduce these diffusers-layout tensor shapes.

    Per stage: width, number of layers, block type (ResBlock has `conv1`, EfficientViTBlock has `attn.to_q`),
    attention kernel sizes (`proj_in` kernels) and head size (`proj_out` groups), batch vs RMS norm (running
    statistics); the resampling convolutions' widths tell pixel-(un)shuffle from strided conv / interpolation.
    What no shape reveals (activations, parameter-free shortcuts) keeps diffusers' defaults.
    """
    encoder = [_stage(layers) for layers in _stage_layers(shapes, "encoder.down_blocks")]
    decoder = [_stage(layers) for layers in _stage_layers(shapes, "decoder.up_blocks")]
    head_dims = [s["head_dim"] for s in encoder + decoder if s["head_dim"]]
    return {
        "in_channels": _shape(shapes, "encoder.conv_in.weight")[1],
        "latent_channels": _shape(shapes, "encoder.conv_out.weight")[0],
        "attention_head_dim": head_dims[0] if head_dims else 32,
        "encoder_block_types": _one_or_all([s["type"] for s in encoder]),
        "decoder_block_types": _one_or_all([s["type"] for s in decoder]),
        "encoder_block_out_channels": tuple(s["width"] for s in encoder),
        "decoder_block_out_channels": tuple(s["width"] for s in decoder),
        "encoder_layers_per_block": tuple(s["layers"] for s in encoder),
        "decoder_layers_per_block": tuple(s["layers"] for s in decoder),
        "encoder_qkv_multiscales": tuple(s["multiscales"] for s in encoder),
        "decoder_qkv_multiscales": tuple(s["multiscales"] for s in decoder),
        "downsample_block_type": _downsample_type(encoder),
        "upsample_block_type": _upsample_type(decoder),
        "decoder_norm_types": _one_or_all([s["norm"] for s in decoder]),
    }


def _shape(shapes: Mapping[str, Sequence[int]], key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"This DC-AE file is incomplete: '{key}' is missing.")
    return tuple(shapes[key])


def _stage_layers(shapes: Mapping[str, Sequence[int]], prefix: str) -> list[list[dict[str, tuple]]]:
    """Per stage, its layers in order, each as {key inside the layer: shape}."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(\d+)\.(.+)$")
    stages: dict[int, dict[int, dict[str, tuple]]] = {}
    for key, shape in shapes.items():
        if m := pattern.match(key):
            stages.setdefault(int(m[1]), {}).setdefault(int(m[2]), {})[m[3]] = tuple(shape)
    if not stages:
        raise ValueError(
            f"This file has no DC-AE layers ('{prefix}.<stage>.<layer>.*'), so it is not a DC-AE: SD, SDXL and Flux "
            f"VAEs share its top-level key names. Pick Sana's DC-AE file."
        )
    if sorted(stages) != list(range(len(stages))):
        raise ValueError(
            f"The DC-AE stages under '{prefix}' are {sorted(stages)}: a stage without layers (the dc-ae-*-mix "
            f"variants) cannot be read from a single file; load the diffusers folder with its config.json."
        )
    return [[layers[i] for i in sorted(layers)] for _, layers in sorted(stages.items())]


def _stage(layers: list[dict[str, tuple]]) -> dict:
    blocks = [layer for layer in layers if "conv1.weight" in layer or "attn.to_q.weight" in layer]
    types = {_RESBLOCK if "conv1.weight" in b else _VIT for b in blocks}
    if len(types) != 1:
        raise ValueError("A DC-AE stage mixes ResBlocks and EfficientViT blocks, which AutoencoderDC cannot build.")
    first = blocks[0]
    attn = first if _VIT in types else {}
    return {
        "type": types.pop(),
        "width": first["conv1.weight"][0] if "conv1.weight" in first else first["attn.to_q.weight"][1],
        "layers": len(blocks),
        "multiscales": _multiscales(attn),
        "head_dim": attn.get("attn.to_qkv_multiscale.0.proj_out.weight", (0, 0))[1],
        "norm": "batch_norm" if any(k.endswith("running_mean") for b in blocks for k in b) else "rms_norm",
        "resample": next((layer["conv.weight"][0] for layer in layers if "conv.weight" in layer), None),
    }


def _multiscales(attn: dict[str, tuple]) -> tuple[int, ...]:
    kernels = []
    while (key := f"attn.to_qkv_multiscale.{len(kernels)}.proj_in.weight") in attn:
        kernels.append(attn[key][-1])
    return tuple(kernels)


def _downsample_type(encoder: list[dict]) -> str:
    """A strided conv keeps the next stage's width; pixel-unshuffle's conv makes a quarter of it."""
    if len(encoder) < 2:
        return "pixel_unshuffle"
    return "Conv" if encoder[0]["resample"] == encoder[1]["width"] else "pixel_unshuffle"


def _upsample_type(decoder: list[dict]) -> str:
    """Interpolation's conv makes the stage's width; pixel-shuffle's conv makes four times as many channels."""
    if len(decoder) < 2:
        return "pixel_shuffle"
    return "interpolate" if decoder[0]["resample"] == decoder[0]["width"] else "pixel_shuffle"


def _one_or_all(values: list[str]) -> str | tuple[str, ...]:
    """One name when every stage agrees, as diffusers' default config writes it."""
    return values[0] if len(set(values)) == 1 else tuple(values)
