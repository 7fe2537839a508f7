"""Input options shared by the loader nodes: model file lists and weight dtypes."""

from __future__ import annotations

import torch

from .. import comfy_bridge as bridge

DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_INPUT = (list(DTYPES), {"default": "auto", "tooltip": "Weight and compute dtype; auto = what ComfyUI picks "
                              "for this device (fp32 on CPU, bf16/fp16 on GPUs)."})


def model_choices(*folders: str) -> list[str]:
    """Files and diffusers / HF folders in ComfyUI's model folders, for a loader's combo."""
    names: list[str] = []
    for folder in folders:
        names += bridge.model_files(folder) + bridge.model_dirs(folder)
    return sorted(set(names))


def resolve_model(folders: tuple[str, ...], name: str) -> str:
    errors = []
    for folder in folders:
        try:
            return bridge.resolve_model_path(folder, name)
        except ValueError as e:
            errors.append(str(e))
    raise ValueError(errors[0])


def resolve_dtype(choice: str, role: str, supported: list[torch.dtype]) -> torch.dtype:
    if choice not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got '{choice}'.")
    if DTYPES[choice] is not None:
        return DTYPES[choice]
    load_device, _ = bridge.devices(role)
    return bridge.compute_dtype(role, load_device, supported)
