"""Input options shared by the loader nodes: model file lists and weight dtypes."""

from __future__ import annotations

import torch

from .. import comfy_bridge as bridge
from ..loaders.storage import STORAGE_DTYPES, storage_dtype

DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_INPUT = (list(DTYPES), {"default": "auto", "tooltip": "Weight and compute dtype; auto = what ComfyUI picks "
                              "for this device (fp32 on CPU, bf16/fp16 on GPUs)."})
# Optional (old API prompts without it still run) and last (old UI workflows keep their widget order).
STORAGE_INPUT = (list(STORAGE_DTYPES), {"default": "default", "tooltip": (
    "How the Linear weights are held in memory: default = in the dtype above; fp8_e4m3fn / fp8_e5m2 = fp8, half of "
    "bf16 (fp8 files stay fp8 instead of being upcast); bf16. Each layer is cast to the dtype above when it runs; "
    "norms, embeddings and the input / output layers keep it.")})


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


def loader_inputs(folders: tuple[str, ...], where: str) -> dict:
    """INPUT_TYPES of a weights loader: a file from `folders`, its dtype and (optional, last) weight storage."""
    return {"required": {
        "model_name": (model_choices(*folders), {"tooltip": f"From {where}."}),
        "dtype": DTYPE_INPUT,
    }, "optional": {"weight_storage": STORAGE_INPUT}}


def resolve_load(folders: tuple[str, ...], model_name: str, dtype: str, weight_storage: str, role: str,
                 supported: list[torch.dtype]) -> tuple[str, torch.dtype, torch.dtype | None]:
    """(path, compute dtype, storage dtype) a weights loader's inputs stand for; ValueError for a bad one."""
    storage = storage_dtype(weight_storage)
    return resolve_model(folders, model_name), resolve_dtype(dtype, role, supported), storage


# Sampler inputs both families share.
SEED_INPUT = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                      "tooltip": "Noise seed; the same seed gives the same noise as ComfyUI's KSampler."})
DENOISE_INPUT = ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                           "tooltip": "Below 1: start from the input latent noised to this level (img2img / v2v)."})
SIGMAS_INPUT = ("SIGMAS", {"tooltip": "Noise levels to visit, as given (Flow Sigmas / Custom Sigmas, ComfyUI's SIGMAS); "
                                      "override steps, shift and denoise. Not with flow_dpmpp_2m."})


def cfg_input(default: float) -> tuple:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                      "tooltip": "Classifier-free guidance scale; 1.0 or less turns guidance off. A connected "
                                 "guidance input replaces it."})


def guidance_input(methods: str) -> tuple:
    return ("GUIDANCE", {"tooltip": f"A guidance method from sampling/guidance ({methods}); overrides cfg."})
