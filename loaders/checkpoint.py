"""Reading checkpoint files safely: safetensors headers, state dicts, diffusers folders.

Every loader goes through here, so a truncated file, a pickle that needs code execution or a folder without
weights gives the same clear `ValueError` whichever node read it.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import zipfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from . import comfy_quant
from .gguf import GGUF_EXT, gguf_shapes, read_gguf, tensor_shape

SAFETENSORS_EXT = (".safetensors", ".sft")
PICKLE_EXT = (".pth", ".pt", ".bin", ".ckpt")

# Keys under which training code stores the weights inside a pickled checkpoint.
_WRAPPER_KEYS = ("state_dict", "model", "module", "ema")

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz, "C64": torch.complex64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}


def read_safetensors_header(path: str) -> dict:
    """The header of a safetensors file (key -> {dtype, shape, data_offsets}, plus `__metadata__`), validated.

    Any malformed file is a ValueError naming the file and what is wrong: a header that runs past the end of the
    file or is no JSON object, tensors without a dtype, shape or data offsets, data of the wrong size for the shape,
    overlapping or gapped ranges, and tensor data that the file is too short to hold (a download cut off half-way).
    These are the rules safetensors itself loads by, checked before it runs.
    """
    name = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"'{name}' is not a safetensors file (only {size} bytes).")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8 or header_len > 100_000_000:
            raise ValueError(
                f"'{name}' is not a valid safetensors file (its header claims {header_len} bytes, "
                f"the file has {size}); it is truncated or not a safetensors file: download it again."
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"'{name}' has a corrupt safetensors header ({type(e).__name__}: {e}).") from e
    problem = _header_problem(header)
    if problem:
        raise ValueError(f"'{name}' has a malformed safetensors header: {problem}. It is damaged or was not written by "
                         "a safetensors writer: download it again.")
    data_end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + data_end > size:
        raise ValueError(
            f"'{name}' is truncated: its tensors need {8 + header_len + data_end} bytes but the "
            f"file has {size}. Download it again."
        )
    if 8 + header_len + data_end < size:
        raise ValueError(f"'{name}' has {size - 8 - header_len - data_end} bytes after its last tensor; it is not a "
                         "whole safetensors file: download it again.")
    return header


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_problem(key: str, info) -> str | None:
    """What is wrong with one tensor's entry: dtype, shape and data_offsets that agree with each other."""
    if not isinstance(info, dict):
        return f"tensor '{key}' is described by a JSON {type(info).__name__}, not an object"
    missing = [field for field in ("dtype", "shape", "data_offsets") if field not in info]
    if missing:
        return f"tensor '{key}' has no {' / '.join(missing)}"
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        return f"tensor '{key}' has the unknown dtype {dtype!r} (known: {', '.join(_DTYPES)})"
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        return f"tensor '{key}' has the shape {shape!r}, not a list of sizes"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets) \
            or offsets[0] > offsets[1]:
        return f"tensor '{key}' has the data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end"
    nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != nbytes:
        return (f"tensor '{key}' is {dtype} {shape} ({nbytes} bytes) but its data_offsets {offsets} hold "
                f"{offsets[1] - offsets[0]} bytes")
    return None


def _header_problem(header) -> str | None:
    """What is wrong with a parsed header (None when nothing is): its shape, each tensor, and the tensors' ranges,
    which must follow each other from the start of the data without gaps or overlaps."""
    if not isinstance(header, dict):
        return f"it is a JSON {type(header).__name__}, not an object of tensors"
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        return "__metadata__ is not an object of strings"
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for key, info in tensors.items():
        problem = _tensor_problem(key, info)
        if problem:
            return problem
    end, previous = 0, None
    for key, info in sorted(tensors.items(), key=lambda item: item[1]["data_offsets"]):
        begin = info["data_offsets"][0]
        if begin < end:
            return f"the data of tensors '{previous}' and '{key}' overlap"
        if begin > end:
            return f"there are {begin - end} unused bytes before tensor '{key}'"
        end, previous = info["data_offsets"][1], key
    return None


def safetensors_shapes(path: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """key -> (shape, dtype) of a safetensors file, from its header alone."""
    return _header_shapes(read_safetensors_header(path))


def _header_shapes(header: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v["shape"]), _DTYPES[v["dtype"]]) for k, v in header.items() if k != "__metadata__"}


def tensor_shapes(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """key -> shape of loaded tensors, the form the config inference and the key checks read (the logical shape of
    GGUF-quantized tensors, not their bytes')."""
    return {k: tensor_shape(v) for k, v in state_dict.items()}


def _load_pickle(path: str) -> dict[str, torch.Tensor]:
    try:
        # mmap (no copy of the weights in RAM) works only for the zip format torch.save writes since 1.6.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"'{os.path.basename(path)}' contains pickled Python objects that need code execution to load, which "
            f"is refused for safety. Use a .safetensors version of this model. ({str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"'{os.path.basename(path)}' could not be read as a PyTorch checkpoint: {e}") from e
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"'{os.path.basename(path)}' holds no tensor dictionary (a state_dict was expected).")
    return obj


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """All tensors of one checkpoint file (.safetensors, .pth/.pt/.bin/.ckpt with weights_only=True, or .gguf with
    its quantized tensors kept quantized, see gguf.py)."""
    if not os.path.isfile(path):
        raise ValueError(f"'{path}' is not a file.")
    lower = path.lower()
    if lower.endswith(SAFETENSORS_EXT):
        header = read_safetensors_header(path)
        return comfy_quant.as_scaled_fp8(load_file(path), header.get("__metadata__", {}), os.path.basename(path))
    if lower.endswith(PICKLE_EXT):
        return _load_pickle(path)
    if lower.endswith(GGUF_EXT):
        return read_gguf(path)
    raise ValueError(
        f"'{os.path.basename(path)}' has an unknown extension; expected one of "
        f"{SAFETENSORS_EXT + PICKLE_EXT + (GGUF_EXT,)}."
    )


def checkpoint_keys(path: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """key -> (shape, dtype) without reading tensor data where the format allows (safetensors, GGUF)."""
    if path.lower().endswith(SAFETENSORS_EXT):
        return _quantised_as_scaled_fp8(path, read_safetensors_header(path))
    if path.lower().endswith(GGUF_EXT):
        return gguf_shapes(path)
    return {k: (tuple(v.shape), v.dtype) for k, v in load_state_dict(path).items()}


def _quantised_as_scaled_fp8(path: str, header: dict) -> dict:
    """The keys of a file in ComfyUI's quantised-layer format as `load_state_dict` gives them (comfy_quant.py),
    reading only the small per-layer format tensors."""
    shapes, metadata = _header_shapes(header), header.get("__metadata__", {})
    if not comfy_quant.is_quantised(shapes, metadata):
        return shapes
    with safe_open(path, "pt") as f:
        formats = comfy_quant.layer_formats(shapes, metadata, f.get_tensor, os.path.basename(path))
    return comfy_quant.as_scaled_fp8_entries(shapes, formats, lambda dtype: ((0,), dtype))


def safetensors_metadata(path: str) -> dict[str, str]:
    with safe_open(path, "pt") as f:
        return f.metadata() or {}


def weight_files_in_folder(folder: str, stem: str) -> list[str]:
    """The weight files of a diffusers / HF model folder: `<stem>.safetensors`, a sharded index, or a variant.

    `stem` is `diffusion_pytorch_model` for diffusers models and `model` for transformers models.
    """
    index = os.path.join(folder, f"{stem}.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(folder, s) for s in shards]
    single = os.path.join(folder, f"{stem}.safetensors")
    if os.path.isfile(single):
        return [single]
    variants = sorted(
        n for n in os.listdir(folder) if n.startswith(stem + ".") and n.endswith(".safetensors") and "index" not in n
    )
    if variants:
        return [os.path.join(folder, variants[0])]
    raise ValueError(f"The folder '{folder}' has no {stem}*.safetensors weights.")


def load_folder_state_dict(folder: str, stem: str) -> dict[str, torch.Tensor]:
    state_dict: dict[str, torch.Tensor] = {}
    for path in weight_files_in_folder(folder, stem):
        state_dict.update(load_state_dict(path))
    return state_dict


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"Could not read '{path}': {e}") from e


def strip_prefix(state_dict: dict, prefixes: tuple[str, ...]) -> dict:
    """Keep only the keys under the first of `prefixes` that occurs, without it.

    ComfyUI bundles put a model under `model.diffusion_model.` beside other models; files without any of the
    prefixes are returned as they are.
    """
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict
