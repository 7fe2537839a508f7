"""LoRA and diff weight patches outside ComfyUI: what ComfyUI's ModelPatcher does with them, for the bridge's
StandalonePatcher (scripts, unit tests). Inside ComfyUI, `comfy.lora.load_lora` builds the patches and the
ModelPatcher applies them; these functions follow the same patch format and the same backup / restore order."""

from __future__ import annotations

import torch

from .cast_layers import to_storage

# The tensor endings (as comfy.lora.load_lora names them) the standalone patches cover.
_STANDALONE_ENDINGS = (".lora_up.weight", ".lora_down.weight", ".alpha", ".diff", ".diff_b")


def standalone_patches(tensors: dict, keys: dict[str, str]) -> dict:
    """LoRA (up / down with alpha) and diff patches in ComfyUI's patch format, for StandalonePatcher."""
    others = sorted(k for k in tensors if not k.endswith(_STANDALONE_ENDINGS))
    if others:
        raise ValueError(f"'{others[0]}': LoHa, LoKr, DoRA and LoCon layers are applied by ComfyUI's weight adapters; "
                         f"outside ComfyUI only LoRA (up/down, alpha) and diff layers are.")
    patches = {}
    for layer, key in keys.items():
        up, alpha, diff, diff_b = (tensors.get(layer + e) for e in (".lora_up.weight", ".alpha", ".diff", ".diff_b"))
        if up is not None:
            patches[key] = ("lora", (up, tensors[f"{layer}.lora_down.weight"], None if alpha is None else alpha.item()))
        if diff is not None:
            patches[key] = ("diff", (diff,))
        if diff_b is not None:
            patches[key.removesuffix("weight") + "bias"] = ("diff", (diff_b,))
    return patches


def patch_weights(patcher) -> None:
    """Give the shared weights this patcher's patches, as ComfyUI's ModelPatcher does when it loads a model: the
    weights another clone patched are restored from their backup first, so other handles never see this one's.
    Layers storing scaled weights convert them first and store the result themselves (ComfyUI's convert_weight /
    set_weight protocol, loaders/cast_layers.py)."""
    model = patcher.model
    if getattr(model, "current_weight_patches_uuid", None) == patcher.patches_uuid:
        return
    backup = model.__dict__.setdefault("weight_backup", {})
    with torch.no_grad():
        for key, weight in backup.items():
            model.get_parameter(key).copy_(weight)
        backup.clear()
        for key, patches in patcher.patches.items():
            module_name, _, name = key.rpartition(".")
            module, parameter = model.get_submodule(module_name), model.get_parameter(key)
            backup[key] = parameter.detach().clone()
            weight = parameter.detach().to(torch.float32, copy=True)
            convert = getattr(module, f"convert_{name}", None)
            weight = patched_weight(convert(weight, inplace=True) if convert is not None else weight, patches)
            store = getattr(module, f"set_{name}", None)
            if store is not None:
                store(weight, inplace_update=True)
            else:
                parameter.copy_(to_storage(weight, parameter.dtype))
    model.current_weight_patches_uuid = patcher.patches_uuid


def patched_weight(weight: torch.Tensor, patches: list) -> torch.Tensor:
    """`comfy.lora.calculate_weight` for LoRA and diff patches, on a float32 weight (ComfyUI rounds the result to
    bf16 / fp8 stochastically; round-to-nearest here)."""
    for strength, (kind, tensors), strength_model, _, _ in patches:
        if strength_model != 1.0:
            weight *= strength_model
        if kind == "diff":
            weight += strength * tensors[0].to(weight)
            continue
        up, down, alpha = tensors
        scale = 1.0 if alpha is None else alpha / down.shape[0]
        weight += (strength * scale) * (up.to(weight).flatten(1) @ down.to(weight).flatten(1)).reshape(weight.shape)
    return weight
