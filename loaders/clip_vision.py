"""CLIP vision encoders (the image tower Wan2.1 image-to-video reads) -> transformers `CLIPVisionModelWithProjection`
or `CLIPVisionModel`.

Layouts:
- transformers names (`vision_model.*`, `visual_projection.weight`): Comfy-Org's `clip_vision_h.safetensors` and the
  `image_encoder/` folder of the diffusers Wan I2V pipelines (config.json + model.safetensors, no projection);
- open_clip names (`visual.transformer.resblocks.N.attn.in_proj_weight`, `visual.proj`), e.g. LAION's
  `open_clip_pytorch_model.bin`;
- Wan-AI's own names (`visual.transformer.N.attn.to_qkv`, `visual.head`, from wan/modules/clip.py) in
  `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`, whose XLM-RoBERTa text tower (`textual.*`, `log_scale`)
  Wan never runs and this loader drops.
transformers has no converter for the two `visual.` layouts (only a script), so the renames are written here.
A single file carries no config: sizes come from the shapes, attention heads and activation from the released models
of that width (ComfyUI's clip_vision_config_*.json agree).
"""

from __future__ import annotations

import math
import os
import re

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

from .checkpoint import (
    checkpoint_keys, load_folder_state_dict, load_state_dict, read_json, strip_prefix, tensor_shapes,
    weight_files_in_folder,
)
from .detect import detect_family
from .gguf import load_weights
from .meta_build import COMPUTE_DTYPES, cast_floats, check_layout, stored_dtype

CLIP_FAMILY = "CLIP vision model"
_PATCH = "vision_model.embeddings.patch_embedding.weight"
_LAYER = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.")
# width -> (attention heads, activation) of the released CLIP image towers: ViT-B/16 and ViT-L/14 (OpenAI,
# quick_gelu), ViT-H/14 (LAION, Wan's), ViT-bigG/14 (LAION). Other widths (tests' tiny ones): 64-wide heads, gelu.
_KNOWN_WIDTHS = {768: (12, "quick_gelu"), 1024: (16, "quick_gelu"), 1280: (16, "gelu"), 1664: (16, "gelu")}
# Prefixes under which bundles and pipelines keep the image tower.
_FILE_PREFIXES = ("image_encoder.", "clip_vision.", "model.")
_WAN_BLOCK = {"norm1.": "layer_norm1.", "norm2.": "layer_norm2.", "attn.proj.": "self_attn.out_proj.",
              "mlp.0.": "mlp.fc1.", "mlp.2.": "mlp.fc2."}
_OPEN_CLIP_BLOCK = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "attn.out_proj.": "self_attn.out_proj.",
                    "mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2."}
_VISUAL_TOP = {  # Wan and open_clip names outside the blocks -> transformers names (shape changes applied below)
    "patch_embedding.weight": _PATCH, "conv1.weight": _PATCH,
    "cls_embedding": "vision_model.embeddings.class_embedding", "class_embedding": "vision_model.embeddings.class_embedding",
    "pos_embedding": "vision_model.embeddings.position_embedding.weight",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "pre_norm.": "vision_model.pre_layrnorm.", "ln_pre.": "vision_model.pre_layrnorm.",
    "post_norm.": "vision_model.post_layernorm.", "ln_post.": "vision_model.post_layernorm.",
    "head": "visual_projection.weight", "proj": "visual_projection.weight",
}


def load_clip_vision(path: str, dtype: torch.dtype | None = None) -> CLIPVisionModel | CLIPVisionModelWithProjection:
    """A CLIP image tower in eval mode on the CPU, in `dtype` (default: the file's float dtype, float32 if mixed).

    With a projection (Comfy-Org / open_clip / Wan-AI files) it is `CLIPVisionModelWithProjection`, else (diffusers'
    image_encoder/) `CLIPVisionModel`; both give the hidden states Wan reads.
    """
    if dtype is not None and dtype not in COMPUTE_DTYPES:
        raise ValueError(f"A CLIP vision model is computed in float32, float16 or bfloat16, not {dtype}.")
    name = os.path.basename(os.path.normpath(path))
    if os.path.isdir(path):
        config, state_dict = _read_folder(path)
    else:
        _require_clip(checkpoint_keys(path), name)
        config, state_dict = None, to_transformers_layout(strip_prefix(load_state_dict(path), _FILE_PREFIXES))
    return clip_vision_from_state_dict(state_dict, name, dtype, config)


def clip_vision_from_state_dict(state_dict: dict, name: str, dtype: torch.dtype | None = None,
                                config: CLIPVisionConfig | None = None):
    """The tower holding a transformers-layout state dict (meta tensors build a meta model), its config from the
    shapes unless given; ValueError when the tensors do not fill it exactly."""
    # older transformers versions saved the position_ids buffer
    state_dict = {k: v for k, v in state_dict.items() if k != "vision_model.embeddings.position_ids"}
    config = config or clip_vision_config(tensor_shapes(state_dict))
    dtype = dtype or stored_dtype(state_dict)
    with_projection = "visual_projection.weight" in state_dict
    with torch.device("meta"):
        model = (CLIPVisionModelWithProjection if with_projection else CLIPVisionModel)(config)
    if not with_projection:  # transformers 5's CLIPVisionModel is the tower itself: its keys have no prefix
        state_dict = {k.removeprefix("vision_model."): v for k, v in state_dict.items()}
    state_dict = cast_floats(state_dict, dtype)
    check_layout(model, tensor_shapes(state_dict), name, "CLIP vision")
    load_weights(model, state_dict)
    _materialise_position_ids(model)
    return model.eval().requires_grad_(False)


def clip_vision_config(shapes: dict[str, tuple[int, ...]]) -> CLIPVisionConfig:
    """The config of a transformers-layout state dict, from its shapes (see the module docstring for heads)."""
    if _PATCH not in shapes:
        raise ValueError("Not a complete CLIP vision model: it has no patch embedding.")
    width, channels, patch, _ = shapes[_PATCH]
    positions = shapes["vision_model.embeddings.position_embedding.weight"][0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ValueError(f"A CLIP vision model with {positions} position embeddings is not a square grid plus the "
                         "class token; this loader takes square CLIP image towers.")
    heads, activation = _KNOWN_WIDTHS.get(width, (max(1, width // 64), "gelu"))
    layers = 1 + max((int(m[1]) for m in map(_LAYER.match, shapes) if m), default=-1)
    projection = shapes.get("visual_projection.weight")
    return CLIPVisionConfig(
        hidden_size=width, intermediate_size=shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0],
        num_hidden_layers=layers, num_attention_heads=heads, num_channels=channels, image_size=grid * patch,
        patch_size=patch, hidden_act=activation, layer_norm_eps=1e-5,
        projection_dim=projection[0] if projection else 512,
    )


def to_transformers_layout(state_dict: dict) -> dict:
    """open_clip or Wan-AI `visual.` keys -> transformers names (fused q/k/v split, tokens un-batched, projection
    transposed); the text tower is dropped; a transformers-layout dict passes through. Works on meta tensors."""
    if not any(k.startswith("visual.") for k in state_dict):
        return state_dict
    result = {}
    for key, tensor in state_dict.items():
        if not key.startswith("visual."):
            continue  # the text tower (textual.*, transformer.* of open_clip) and log_scale / logit_scale
        key = key[len("visual."):]
        block = re.fullmatch(r"transformer\.(?:resblocks\.)?(\d+)\.(.+)", key)
        if block:
            result.update(_block_tensors(int(block[1]), block[2], tensor))
            continue
        new = next((v + key[len(k):] for k, v in _VISUAL_TOP.items() if key == k or (k.endswith(".")
                                                                                     and key.startswith(k))), None)
        if new is None:
            raise ValueError(f"Unknown CLIP vision tensor 'visual.{key}': not an open_clip or Wan-AI CLIP image tower.")
        if new.endswith("class_embedding"):  # Wan keeps the class token and the positions batched
            tensor = tensor.reshape(tensor.shape[-1:])
        elif new.endswith("position_embedding.weight"):
            tensor = tensor.reshape(tensor.shape[-2:])
        elif new == "visual_projection.weight":
            tensor = tensor.t().contiguous()
        result[new] = tensor
    return result


def _block_tensors(index: int, rest: str, tensor: torch.Tensor) -> dict:
    prefix = f"vision_model.encoder.layers.{index}."
    fused = re.fullmatch(r"attn\.(?:to_qkv\.(weight|bias)|in_proj_(weight|bias))", rest)
    if fused:
        kind = fused[1] or fused[2]
        return {f"{prefix}self_attn.{p}_proj.{kind}": part
                for p, part in zip("qkv", tensor.chunk(3, dim=0))}
    for old, new in {**_WAN_BLOCK, **_OPEN_CLIP_BLOCK}.items():
        if rest.startswith(old):
            return {prefix + new + rest[len(old):]: tensor}
    raise ValueError(f"Unknown CLIP vision block tensor '{rest}' in block {index}.")


def _read_folder(path: str) -> tuple[CLIPVisionConfig, dict]:
    """A transformers CLIPVisionModel folder, or a diffusers pipeline folder with `image_encoder/`."""
    folder = os.path.join(path, "image_encoder") if os.path.isdir(os.path.join(path, "image_encoder")) else path
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"The folder '{folder}' has no config.json: pass the .safetensors file itself.")
    raw = read_json(config_path)
    if raw.get("model_type") not in ("clip_vision_model", "clip"):
        raise ValueError(f"The folder '{folder}' holds a {raw.get('model_type', 'model of unknown type')}, not a CLIP "
                         "vision model.")
    config = CLIPVisionConfig.from_dict(raw.get("vision_config", raw))
    state_dict = _with_tower_prefix(load_folder_state_dict(folder, "model"))
    _require_clip({k: None for k in state_dict}, os.path.basename(os.path.normpath(path)))
    return config, state_dict


def _with_tower_prefix(state_dict: dict) -> dict:
    """transformers 4 saved CLIPVisionModel's keys under `vision_model.` (the released image_encoder/ files),
    transformers 5 saves them without it: both -> the prefixed names."""
    return {k if k.startswith(("vision_model.", "visual_projection.")) else "vision_model." + k: v
            for k, v in state_dict.items()}


def _require_clip(keys, name: str) -> None:
    family = detect_family(keys)
    if family != CLIP_FAMILY:
        found = "its tensor names match no known model" if family == "unknown model" else f"it is a {family}"
        raise ValueError(f"'{name}' is not a CLIP vision model: {found}. Wan image-to-video uses "
                         "clip_vision_h.safetensors (CLIP ViT-H/14) in models/clip_vision.")


def _materialise_position_ids(model) -> None:
    """`position_ids` is a non-persistent buffer no file holds: compute it as the constructor does."""
    embeddings = getattr(model, "vision_model", model).embeddings
    embeddings.position_ids = torch.arange(embeddings.num_positions).expand((1, -1))
