"""ComfyUI's quantised-layer format (0.33+), read as the scaled fp8 form the loaders already take.

ComfyUI 0.33 rewrites its older scaled fp8 files on load (comfy/utils.py `convert_old_quants`) and writes new ones as:
per quantised layer `<layer>.weight` in the storage dtype, `<layer>.weight_scale` (float32, weight = stored * scale),
optionally `<layer>.input_scale`, and the layer's format as JSON - either a uint8 tensor `<layer>.comfy_quant` or, for
the whole file, the safetensors metadata `_quantization_metadata` = {"layers": {layer: {"format": ...}}} (comfy/ops.py
`_load_quantized_module` reads both). The fp8 formats are exactly the older scaled fp8 (`<layer>.scale_weight`,
`<layer>.scale_input`, a `scaled_fp8` marker tensor); the block-scaled and 4-bit formats (mxfp8, nvfp4, int8, W4A4,
W4A8) need ComfyUI's quantised kernels, which the pack does not have, so such files are refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import torch

QUANT_SUFFIX = ".comfy_quant"
METADATA_KEY = "_quantization_metadata"
_WEIGHT_SCALE, _INPUT_SCALE = ".weight_scale", ".input_scale"
SCALED_FP8_MARKER = "scaled_fp8"
_FP8_FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}


def is_quantised(keys: Iterable[str], metadata: dict[str, str]) -> bool:
    return METADATA_KEY in metadata or any(key.endswith(QUANT_SUFFIX) for key in keys)


def layer_formats(keys: Iterable[str], metadata: dict[str, str], read: Callable[[str], torch.Tensor],
                  name: str) -> dict[str, str]:
    """layer -> quantisation format, from the file metadata or the layers' `comfy_quant` tensors (read by `read`)."""
    try:
        if METADATA_KEY in metadata:
            layers = json.loads(metadata[METADATA_KEY])["layers"]
        else:
            layers = {key[: -len(QUANT_SUFFIX)]: json.loads(bytes(read(key).tolist()))
                      for key in keys if key.endswith(QUANT_SUFFIX)}
        formats = {layer: conf["format"] for layer, conf in layers.items()}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"'{name}' has unreadable ComfyUI quantisation metadata ({error}); the file is damaged or "
                         "from a newer ComfyUI format.") from None
    unsupported = sorted({f for f in formats.values() if f not in _FP8_FORMATS}, key=str)
    if unsupported:
        raise ValueError(
            f"'{name}' holds layers quantised as {', '.join(map(str, unsupported))} (ComfyUI's quantised formats), "
            "which need ComfyUI's own quantised kernels; this pack runs the fp8 formats (float8_e4m3fn, "
            "float8_e5m2) - use the fp8_scaled, bf16 or fp16 release of this model.")
    return formats


def as_scaled_fp8_entries(entries: dict, formats: dict[str, str], marker) -> dict:
    """`entries` (key -> tensor, or anything per key) under their names in the older scaled fp8 form: the layers'
    `comfy_quant` entries dropped, their scales renamed, and `marker(dtype)` as the `scaled_fp8` marker."""
    out = {}
    for key, value in entries.items():
        if key.endswith(QUANT_SUFFIX):
            continue
        if key.endswith(_WEIGHT_SCALE) and key[: -len(_WEIGHT_SCALE)] in formats:
            key = key[: -len(_WEIGHT_SCALE)] + ".scale_weight"
        elif key.endswith(_INPUT_SCALE) and key[: -len(_INPUT_SCALE)] in formats:
            key = key[: -len(_INPUT_SCALE)] + ".scale_input"
        out[key] = value
    if formats:
        out[SCALED_FP8_MARKER] = marker(_FP8_FORMATS[next(iter(formats.values()))])
    return out


def as_scaled_fp8(state_dict: dict[str, torch.Tensor], metadata: dict[str, str], name: str) -> dict[str, torch.Tensor]:
    """A state dict of ComfyUI's quantised-layer format in the older scaled fp8 form; others as they are."""
    if not is_quantised(state_dict, metadata):
        return state_dict
    formats = layer_formats(state_dict, metadata, state_dict.__getitem__, name)
    return as_scaled_fp8_entries(state_dict, formats, lambda dtype: torch.empty(0, dtype=dtype))
