"""Tiny random LoRAs for the tiny Sana and Wan transformers, in the file layouts the LoRA loaders read.

A LoRA is made as (down, up) matrices per diffusers layer name; `peft` gives the tensors diffusers'
`load_lora_adapter` reads (the reference), the other writers give the layouts found in the wild. Original layer names
come from tiny_wan / tiny_sana's own diffusers -> original maps, written independently of the loaders'.
"""

from __future__ import annotations

import math
import os
import re

import torch
from safetensors.torch import save_file

import tiny_sana
import tiny_wan

WAN_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
              "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")
SANA_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
               "attn2.to_out.0", "ff.conv_inverted", "ff.conv_point")
# Sana layers the original holds as one fused layer (attn.qkv, cross_attn.kv_linear): a LoRA on it has one down
# matrix, so the diffusers layers share theirs.
SANA_FUSED = {("attn1.to_q", "attn1.to_k", "attn1.to_v"): "attn.qkv",
              ("attn2.to_k", "attn2.to_v"): "cross_attn.kv_linear"}


def make_lora(model, layers=None, rank: int = 4, seed: int = 0, up_scale: float = 0.3) -> dict[str, tuple]:
    """diffusers layer name -> (down [rank, in, ...], up [out, rank, ...]) for `layers` of every block of `model`."""
    wan = hasattr(model, "condition_embedder")
    layers = layers or (WAN_LAYERS if wan else SANA_LAYERS)
    blocks = "blocks" if wan else "transformer_blocks"
    shared = {} if wan else {layer: group[0] for group in SANA_FUSED for layer in group}
    generator = torch.Generator().manual_seed(seed)
    parameters = dict(model.named_parameters())
    lora = {}
    for index in range(model.config.num_layers):
        downs = {}
        for layer in layers:
            name = f"{blocks}.{index}.{layer}"
            weight = parameters[name + ".weight"]
            first = shared.get(layer, layer)
            if first not in downs:
                fan_in = math.prod(weight.shape[1:])
                downs[first] = torch.randn(rank, *weight.shape[1:], generator=generator) / math.sqrt(fan_in)
            kernel = (1,) * (weight.ndim - 2)
            lora[name] = (downs[first], torch.randn(weight.shape[0], rank, *kernel, generator=generator) * up_scale)
    return lora


def peft(lora: dict, prefix: str = "transformer.", alpha: float | None = None) -> dict[str, torch.Tensor]:
    """PEFT / diffusers tensors; an `alpha` is folded into the up matrices (PEFT files keep no alpha tensors)."""
    tensors = {}
    for layer, (down, up) in lora.items():
        scale = 1.0 if alpha is None else alpha / down.shape[0]
        tensors[f"{prefix}{layer}.lora_A.weight"] = down
        tensors[f"{prefix}{layer}.lora_B.weight"] = up * scale
    return tensors


def original(lora: dict, prefix: str = "diffusion_model.", names=("lora_A", "lora_B"),
             alpha: float | None = None, kohya: bool = False) -> dict[str, torch.Tensor]:
    """The original model's layer names (ComfyUI / DiffSynth / musubi layouts), Sana's fused layers fused.

    `names` are the (down, up) tensor names; `kohya` writes every '.' of the layer name as '_'.
    """
    tensors = {}
    for layer, down, up in _original_layers(lora):
        name = layer.replace(".", "_") if kohya else layer
        tensors[f"{prefix}{name}.{names[0]}.weight"] = down
        tensors[f"{prefix}{name}.{names[1]}.weight"] = up
        if alpha is not None:
            tensors[f"{prefix}{name}.alpha"] = torch.tensor(alpha)
    return tensors


def original_name(layer: str) -> str:
    """Original name of a diffusers layer of tiny Wan or Sana (not of a fused part)."""
    block = re.fullmatch(r"(transformer_blocks|blocks)\.(\d+)\.(.+)", layer)
    if block[1] == "blocks":
        return tiny_wan.diffusers_to_original({layer + ".weight": None}).popitem()[0].removesuffix(".weight")
    return f"blocks.{block[2]}.{tiny_sana._rename(block[3] + '.', tiny_sana._BLOCK)[:-1]}"


def _original_layers(lora: dict):
    done = set()
    for layer, (down, up) in lora.items():
        if layer in done:
            continue
        block, rest = re.fullmatch(r"(transformer_blocks\.\d+\.)?(.+)", layer).groups()
        group = next((g for g in SANA_FUSED if rest in g), None) if block else None
        if group is None:
            yield original_name(layer), down, up
            continue
        parts = [block + part for part in group]
        done.update(parts)
        index = block.split(".")[1]
        yield f"blocks.{index}.{SANA_FUSED[group]}", down, torch.cat([lora[p][1] for p in parts])


def save(tensors: dict, path: str, metadata: dict | None = None) -> str:
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, path, metadata=metadata)  # shared downs
    return path


def diff_b(lora: dict, prefix: str = "diffusion_model.", seed: int = 11) -> dict[str, torch.Tensor]:
    """Bias deltas (`diff_b`, original names) for the layers of `lora`."""
    generator = torch.Generator().manual_seed(seed)
    return {f"{prefix}{original_name(layer)}.diff_b": torch.randn(up.shape[0], generator=generator) * 0.3
            for layer, (_, up) in lora.items()}


# Two LoRAs for the tiny Wan of the integration tests (any text width: they change the blocks only).
WAN_LORA_FILES = ("wan_lora_tiny_comfy.safetensors", "wan_lora_tiny_musubi.safetensors")


def write_wan_loras(directory: str) -> list[str]:
    """WAN_LORA_FILES in `directory`, in layouts native ComfyUI reads too: its own (`diffusion_model.`, lora_down /
    lora_up, alpha, diff_b) and musubi-tuner's kohya names with alpha."""
    os.makedirs(directory, exist_ok=True)
    model = tiny_wan.tiny_wan_transformer(seed=5, text_dim=32)
    first, second = make_lora(model, seed=21), make_lora(model, rank=2, seed=22)
    files = ({**original(first, names=("lora_down", "lora_up"), alpha=2.0), **diff_b(first)},
             original(second, "lora_unet_", ("lora_down", "lora_up"), 4.0, kohya=True))
    return [save(tensors, os.path.join(directory, name)) for tensors, name in zip(files, WAN_LORA_FILES)]
