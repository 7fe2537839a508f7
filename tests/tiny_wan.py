"""Tiny random Wan2.1 transformers and every on-disk layout the Wan loader accepts, for tests.

The tiny config is one native ComfyUI can load too: ComfyUI infers num_heads = dim // 128 and hard-codes
text_dim 4096, freq_dim 256, patch (1, 2, 2) and a 1280-wide CLIP image embedder, so those stay at the real values
(text_dim is an override for a tiny text encoder; the loader reads it from the weights).
The diffusers -> original key map is written out independently of the loader's map (diffusers' converter): a
swapped or misnamed entry in either one then shows up as a different forward output.
"""

from __future__ import annotations

import copy
import os
import re

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

TINY_CONFIG = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 1,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 256,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "pos_embed_seq_len": None,
}
VARIANTS = {
    "t2v": {},
    "i2v": {"in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 128},
    # first-last-frame: the CLIP tokens of two 224-pixel images (2 x 257) get a learned position embedding
    "flf2v": {"in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 128, "pos_embed_seq_len": 514},
    "i2v_a14b": {"in_channels": 36},  # Wan2.2 I2V-A14B experts: no CLIP image embedder
    "ti2v": {"in_channels": 48, "out_channels": 48},  # Wan2.2 TI2V-5B: the Wan2.2 VAE's 48 channels
}
LAYOUTS = ("diffusers_folder", "pipeline_folder", "diffusers_single", "original_folder", "original_safetensors",
           "original_pth", "comfy_prefixed", "comfy_fp8_scaled", "fp8_plain")
FP8_LAYOUTS = ("comfy_fp8_scaled", "fp8_plain")
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max

_TOP_LEVEL = {
    "condition_embedder.time_embedder.linear_1.": "time_embedding.0.",
    "condition_embedder.time_embedder.linear_2.": "time_embedding.2.",
    "condition_embedder.text_embedder.linear_1.": "text_embedding.0.",
    "condition_embedder.text_embedder.linear_2.": "text_embedding.2.",
    "condition_embedder.time_proj.": "time_projection.1.",
    "condition_embedder.image_embedder.norm1.": "img_emb.proj.0.",
    "condition_embedder.image_embedder.ff.net.0.proj.": "img_emb.proj.1.",
    "condition_embedder.image_embedder.ff.net.2.": "img_emb.proj.3.",
    "condition_embedder.image_embedder.norm2.": "img_emb.proj.4.",
    "condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos",
    "patch_embedding.": "patch_embedding.",
    "proj_out.": "head.head.",
    "scale_shift_table": "head.modulation",
}
_BLOCK = {
    "attn1.to_q.": "self_attn.q.",
    "attn1.to_k.": "self_attn.k.",
    "attn1.to_v.": "self_attn.v.",
    "attn1.to_out.0.": "self_attn.o.",
    "attn1.norm_q.": "self_attn.norm_q.",
    "attn1.norm_k.": "self_attn.norm_k.",
    "attn2.to_q.": "cross_attn.q.",
    "attn2.to_k.": "cross_attn.k.",
    "attn2.to_v.": "cross_attn.v.",
    "attn2.to_out.0.": "cross_attn.o.",
    "attn2.norm_q.": "cross_attn.norm_q.",
    "attn2.norm_k.": "cross_attn.norm_k.",
    "attn2.add_k_proj.": "cross_attn.k_img.",
    "attn2.add_v_proj.": "cross_attn.v_img.",
    "attn2.norm_added_k.": "cross_attn.norm_k_img.",
    # The original calls its norms in the order norm1, norm3, norm2: its affine cross-attention norm is norm3.
    "norm2.": "norm3.",
    "ffn.net.0.proj.": "ffn.0.",
    "ffn.net.2.": "ffn.2.",
    "scale_shift_table": "modulation",
}
# The Wan-AI release folders carry a config.json of their own WanModel class beside original-layout weights.
_WANMODEL_CONFIG = '{{"_class_name": "WanModel", "dim": {dim}, "ffn_dim": {ffn}, "num_layers": {layers}}}'


def tiny_wan_config(variant: str = "t2v") -> dict:
    return {**TINY_CONFIG, **VARIANTS[variant]}


def tiny_wan_transformer(variant: str = "t2v", seed: int = 0, **overrides) -> WanTransformer3DModel:
    """A 2-layer, 128-wide Wan of the given variant with every parameter random (zero-init layers included).

    Weights are scaled by 1/sqrt(fan-in) so activations stay in range through the blocks; `overrides` change config
    fields, e.g. a text_dim that fits a tiny text encoder.
    """
    model = WanTransformer3DModel(**{**tiny_wan_config(variant), **overrides})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            std = 0.2 if parameter.ndim == 1 else parameter[0].numel() ** -0.5
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def write_wan_layouts(model: WanTransformer3DModel, directory: str) -> dict[str, str]:
    """Write `model` in every layout the loader accepts; layout name -> path to hand to the loader."""
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    original = diffusers_to_original(state_dict)
    paths = {
        "diffusers_folder": os.path.join(directory, "diffusers"),
        "pipeline_folder": os.path.join(directory, "pipeline"),
        "diffusers_single": os.path.join(directory, "wan_diffusers.safetensors"),
        "original_folder": os.path.join(directory, "Wan2.1-T2V-tiny"),
        "original_safetensors": os.path.join(directory, "wan.safetensors"),
        "original_pth": os.path.join(directory, "wan.pth"),
        "comfy_prefixed": os.path.join(directory, "wan_comfy.safetensors"),
        "comfy_fp8_scaled": os.path.join(directory, "wan_fp8_e4m3fn_scaled.safetensors"),
        "fp8_plain": os.path.join(directory, "wan_fp8_e4m3fn.safetensors"),
    }
    model.save_pretrained(paths["diffusers_folder"])
    # Sharded like the released pipelines' transformer/ folders.
    model.save_pretrained(os.path.join(paths["pipeline_folder"], "transformer"), max_shard_size="1MB")
    save_file(state_dict, paths["diffusers_single"])
    _write_original_folder(original, model.config, paths["original_folder"])
    save_file(original, paths["original_safetensors"])
    torch.save(original, paths["original_pth"])
    save_file({"model.diffusion_model." + k: v for k, v in original.items()}, paths["comfy_prefixed"])
    save_file(comfy_scaled_fp8(original), paths["comfy_fp8_scaled"])
    save_file(plain_fp8(original), paths["fp8_plain"])
    return paths


def diffusers_to_original(state_dict: dict) -> dict[str, torch.Tensor]:
    """Diffusers keys -> the original Wan2.1 release layout (the names ComfyUI's WanModel uses)."""
    original = {}
    for key, tensor in state_dict.items():
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        if block is None:
            original[_rename(key, _TOP_LEVEL)] = tensor
        else:
            original[f"blocks.{block[1]}.{_rename(block[2], _BLOCK)}"] = tensor
    return original


def is_linear_weight(key: str, tensor: torch.Tensor) -> bool:
    """In Wan every 2-D weight is an nn.Linear's: the layers ComfyUI's scaled-fp8 ops quantise."""
    return key.endswith(".weight") and tensor.ndim == 2


def comfy_scaled_fp8(original: dict) -> dict[str, torch.Tensor]:
    """ComfyUI's scaled fp8 layout, as `BaseModel.state_dict_for_saving` writes a model loaded with scaled-fp8 ops.

    Those ops build every Linear in float8_e4m3fn, bias included: weights are stored as weight / scale_weight (a
    float32 scalar, here amax / 448 with round to nearest), biases as plain fp8; each layer has a `scale_input` of 1
    and the file an empty `scaled_fp8` marker whose dtype names the fp8 format. Other tensors stay as they are.
    """
    linear_layers = {k[: -len(".weight")] for k, v in original.items() if is_linear_weight(k, v)}
    result = {"scaled_fp8": torch.tensor([], dtype=torch.float8_e4m3fn)}
    for key, tensor in original.items():
        layer, kind = key.rsplit(".", 1)
        if layer not in linear_layers:
            result[key] = tensor
        elif kind == "weight":
            scale = fp8_scale(tensor)
            result[key] = (tensor.float() / scale).to(torch.float8_e4m3fn)
            result[layer + ".scale_weight"] = scale
            result[layer + ".scale_input"] = torch.ones((), dtype=torch.float32)
        else:
            result[key] = tensor.to(torch.float8_e4m3fn)
    return result


def plain_fp8(original: dict, fp8: torch.dtype = torch.float8_e4m3fn) -> dict[str, torch.Tensor]:
    """Linear weights cast to fp8 without scales, biases and the rest kept (kijai's plain fp8 files)."""
    return {k: v.to(fp8) if is_linear_weight(k, v) else v for k, v in original.items()}


def fp8_scale(weight: torch.Tensor) -> torch.Tensor:
    return (weight.float().abs().max() / FP8_MAX).reshape(())


def quantised_reference(model: WanTransformer3DModel, scaled: bool, fp8: torch.dtype = torch.float8_e4m3fn):
    """A copy of `model` whose Linear layers went through the fp8 file and back, dequantised as ComfyUI computes
    them (`weight.to(dtype) * scale_weight.to(dtype)`, fp8 biases cast): what a loader of the fp8 layouts must give.
    """
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for module in reference.modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            weight = module.weight
            scale = fp8_scale(weight) if scaled else torch.ones((), dtype=torch.float32)
            weight.copy_((weight.float() / scale).to(fp8).to(weight.dtype) * scale.to(weight.dtype))
            if scaled and module.bias is not None:
                module.bias.copy_(module.bias.to(fp8).to(module.bias.dtype))
    return reference


def write_expert_pair_layouts(high: WanTransformer3DModel, low: WanTransformer3DModel, directory: str,
                              boundary_ratio: float = 0.875) -> dict[str, str]:
    """Two Wan2.2 A14B-like experts in the folders that hold both: a diffusers pipeline (`transformer/`,
    `transformer_2/`, model_index.json with `boundary_ratio`) and a Wan-AI release (`high_noise_model/`,
    `low_noise_model/`, each an original-layout folder with its WanModel config.json)."""
    paths = {"pipeline": os.path.join(directory, "Wan2.2-A14B-Diffusers"),
             "wan_ai": os.path.join(directory, "Wan2.2-A14B")}
    high.save_pretrained(os.path.join(paths["pipeline"], "transformer"), max_shard_size="1MB")
    low.save_pretrained(os.path.join(paths["pipeline"], "transformer_2"), max_shard_size="1MB")
    with open(os.path.join(paths["pipeline"], "model_index.json"), "w") as f:
        f.write(f'{{"_class_name": "WanPipeline", "boundary_ratio": {boundary_ratio}, "expand_timesteps": false, '
                f'"transformer": ["diffusers", "WanTransformer3DModel"], '
                f'"transformer_2": ["diffusers", "WanTransformer3DModel"]}}')
    for model, name in ((high, "high_noise_model"), (low, "low_noise_model")):
        original = diffusers_to_original({k: v.contiguous() for k, v in model.state_dict().items()})
        _write_original_folder(original, model.config, os.path.join(paths["wan_ai"], name))
    return paths


def _write_original_folder(original: dict, config, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    save_file(original, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    width = config["num_attention_heads"] * config["attention_head_dim"]
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(_WANMODEL_CONFIG.format(dim=width, ffn=config["ffn_dim"], layers=config["num_layers"]))


def _rename(key: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if key == new or (new.endswith(".") and key.startswith(new)):
            return old + key[len(new):]
    raise KeyError(f"tiny_wan has no original name for '{key}'")
