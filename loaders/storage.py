"""Weight storage dtypes chosen at load time: Linear / Conv weights held in fp8 (e4m3fn, e5m2) or bf16 and cast up
to the model's compute dtype on each call (loaders/cast_layers.py), halving (fp8 vs bf16) the memory they take.

Which layers are stored follows diffusers' layerwise casting (`ModelMixin.enable_layerwise_casting`): Linear and
Conv layers, except those whose name, or a parent's, matches diffusers' default skip patterns (positional and patch
embeddings, norms, the input / output projections), the model's `_skip_layerwise_casting_patterns` (Wan: the
condition embedder, Sana: the patch embedding) or its `_keep_in_fp32_modules` (UMT5: `wo`, whose input the model
casts to that layer's weight dtype). Embeddings stay in the compute dtype too: a cast on call would convert the whole
table for a lookup. Biases keep the compute dtype.

A file already in the storage dtype is taken as it is: plain fp8 weights, and ComfyUI's scaled fp8 weights with their
per-layer `scale_weight` (applied on each call exactly as the dequantising load computes it, weight * scale in the
compute dtype). Other files are cast, through the compute dtype's value where a scale has to be applied first.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN
from torch import nn

from .cast_layers import SCALE, install, to_storage

STORAGE_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
                  "bf16": torch.bfloat16}
_STORED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                 nn.ConvTranspose3d)
_SCALE_INPUT = "scale_input"


def storage_dtype(choice: str) -> torch.dtype | None:
    """A storage choice's dtype (None: the compute dtype); ValueError for an unknown choice."""
    if choice not in STORAGE_DTYPES:
        raise ValueError(f"weight_storage must be one of {list(STORAGE_DTYPES)}, got '{choice}'.")
    return STORAGE_DTYPES[choice]


def skip_patterns(model: nn.Module) -> tuple[str, ...]:
    """diffusers' default patterns plus the model class's own skip and keep-in-fp32 lists."""
    extra = [*(getattr(model, "_keep_in_fp32_modules", None) or ()),
             *(getattr(model, "_skip_layerwise_casting_patterns", None) or ())]
    return tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(extra)


def stored_layers(model: nn.Module) -> dict[str, nn.Module]:
    """name -> layer, for the layers whose weights a storage dtype holds (see the module docstring)."""
    patterns = skip_patterns(model)
    skipped: set[str] = set()
    layers = {}
    for name, module in model.named_modules():
        parent = name.rpartition(".")[0]
        if parent in skipped or (name and any(re.search(p, name) for p in patterns)):
            skipped.add(name)
        elif isinstance(module, _STORED_TYPES):
            layers[name] = module
    return layers


def storage_preparer(compute_dtype: torch.dtype, storage: torch.dtype | None,
                     cast_rest: Callable[[dict], dict]) -> Callable[[nn.Module, dict], dict]:
    """`prepare(model_on_meta, state_dict) -> state_dict` for a loader: the stored layers' weights in `storage`
    (their layers made to cast up on call), every other tensor through `cast_rest` (the loader's own casting and
    dequantising). With no storage dtype, or one equal to the compute dtype, it is `cast_rest` alone.
    """
    if storage not in STORAGE_DTYPES.values():
        raise ValueError(f"Weights are stored in {[str(d) for d in STORAGE_DTYPES.values() if d]}, not {storage}.")

    def prepare(model: nn.Module, state_dict: dict) -> dict:
        layers = stored_layers(model) if storage not in (None, compute_dtype) else {}
        # Quantized (GGUF) weights keep their own format: only floating weights change storage.
        layers = {n: m for n, m in layers.items() if _floating(state_dict.get(f"{n}.weight"))}
        held = {f"{name}.{suffix}" for name in layers for suffix in ("weight", SCALE, _SCALE_INPUT)}
        rest = cast_rest({k: v for k, v in state_dict.items() if k not in held})
        if not layers:
            return rest
        stored = store_weights(layers, state_dict, compute_dtype, storage)
        install(model)
        return {**rest, **stored}

    return prepare


def _floating(tensor) -> bool:
    return tensor is not None and tensor.is_floating_point()


def store_weights(layers: dict[str, nn.Module], state_dict: dict, compute_dtype: torch.dtype,
                  storage: torch.dtype) -> dict:
    """The state-dict entries of the stored layers' weights (and kept scales); marks each layer to upcast on call.

    Registers a `scale_weight` buffer on the layers whose scaled fp8 weights are kept, so the strict load finds it.
    """
    out = {}
    for name, layer in layers.items():
        weight = state_dict[f"{name}.weight"]
        scale = state_dict.get(f"{name}.{SCALE}")
        if scale is not None and weight.dtype == storage:
            layer.register_buffer(SCALE, torch.empty(scale.shape, dtype=scale.dtype, device="meta"))
            out[f"{name}.{SCALE}"] = scale
        else:
            if scale is not None:
                weight = weight.to(compute_dtype) * scale.to(compute_dtype)
            weight = to_storage(weight, storage)
        layer.upcast_dtype = compute_dtype
        out[f"{name}.weight"] = weight
    return out


def stored_bytes(model: nn.Module) -> dict[torch.dtype, int]:
    """dtype -> bytes of the model's parameters and buffers, for reports and tests."""
    sizes: dict[torch.dtype, int] = {}
    for tensor in model.state_dict().values():
        sizes[tensor.dtype] = sizes.get(tensor.dtype, 0) + tensor.numel() * tensor.element_size()
    return sizes
