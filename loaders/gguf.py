"""GGUF files (llama.cpp's format: city96's Wan2.1 and UMT5 quantisations, Sana conversions) with the quantized
weights kept quantized in memory.

`read_gguf` gives a state dict like `load_state_dict` does: F32 / F16 / BF16 tensors as plain torch tensors,
quantized ones as diffusers' `GGUFParameter` (the file's raw blocks tagged with their GGML type), both on the file's
memory map. The family loaders rename, split and check them with the same converters as safetensors files;
`load_weights` then makes every Linear / Conv / Embedding that holds a quantized weight a layer that dequantises it
in forward, one layer at a time, so a model needs about its file's size in memory.

The blocks are held as int8 (the bytes reinterpreted), not uint8: transformers' T5 feed-forward and diffusers' Wan
time embedder cast their input to the weight's dtype unless that is int8, the dtype both treat as quantized.
"""

from __future__ import annotations

import os

import gguf
import torch
import torch.nn.functional as F
from diffusers.quantizers.gguf.utils import GGML_QUANT_SIZES, GGUFParameter, dequantize_functions
from torch import nn

GGUF_EXT = ".gguf"

_TYPES = gguf.GGMLQuantizationType
_PLAIN = {_TYPES.F32: torch.float32, _TYPES.F16: torch.float16, _TYPES.BF16: torch.bfloat16,
          _TYPES.F64: torch.float64}
_INTEGER = {_TYPES.I8: torch.int8, _TYPES.I16: torch.int16, _TYPES.I32: torch.int32, _TYPES.I64: torch.int64}
# What diffusers' torch dequantisers cover (its BF16 entry is read above as a plain tensor instead).
QUANTIZED_TYPES = frozenset(dequantize_functions) - set(_PLAIN)
_READABLE = {*_PLAIN, *_INTEGER, *QUANTIZED_TYPES}
SUPPORTED = ", ".join(t.name for t in sorted({*_PLAIN, *QUANTIZED_TYPES}))
# city96's convention (ComfyUI-GGUF tools/convert.py) for a tensor stored in another shape than the model's: the
# model's shape as an int array under this key + the tensor's name.
ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."


class _Reader(gguf.GGUFReader):
    """gguf's reader, refusing a GGML type id it does not know with the tensor's name (it would raise a bare
    `ValueError: N is not a valid GGMLQuantizationType`)."""

    def _build_tensors(self, start_offs, fields):
        for field in fields:
            name, type_id = bytes(field.parts[1]).decode(errors="replace"), int(field.parts[4][0])
            if type_id not in _TYPES._value2member_map_:
                raise ValueError(
                    f"Tensor '{name}' has GGML type id {type_id}, a quantization that the gguf package does "
                    f"not know (a newer llama.cpp type?). Supported: {SUPPORTED}."
                )
        super()._build_tensors(start_offs, fields)


def _open(path: str) -> _Reader:
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise ValueError(f"'{path}' is not a file.")
    try:
        # Copy-on-write mapping: writable numpy views for torch.from_numpy, no copy of the weights.
        reader = _Reader(path, "c")
    except ValueError as e:
        if "GGML type id" in str(e):
            raise ValueError(f"'{name}': {e}") from e
        raise ValueError(f"'{name}' is not a readable GGUF file ({e}); it may be truncated: download it again.") from e
    except (IndexError, OSError) as e:
        raise ValueError(f"'{name}' is not a readable GGUF file ({e}); it may be truncated: download it again.") from e
    for tensor in reader.tensors:
        if tensor.tensor_type not in _READABLE:
            raise ValueError(
                f"'{name}': tensor '{tensor.name}' is stored as {tensor.tensor_type.name}, a GGUF quantization this "
                f"loader cannot dequantize. Supported: {SUPPORTED}. Use a file quantized to one of these (city96's "
                f"Q8_0, Q6_K, Q5_K_M, Q4_K_M, ... files are)."
            )
    return reader


def _shape(reader: _Reader, tensor) -> tuple[int, ...]:
    """The model's shape of a tensor: city96's orig_shape metadata, else the GGUF dims (stored innermost first)."""
    field = reader.get_field(ORIG_SHAPE_KEY + tensor.name)
    if field is not None:
        return tuple(int(field.parts[i][0]) for i in field.data)
    return tuple(int(d) for d in reversed(tensor.shape.tolist()))


def gguf_shapes(path: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (the model's shape, dtype) of every tensor, without reading tensor data; quantized ones are int8."""
    reader = _open(path)
    dtypes = {**_PLAIN, **_INTEGER}
    return {t.name: (_shape(reader, t), dtypes.get(t.tensor_type, torch.int8)) for t in reader.tensors}


def read_gguf(path: str) -> dict[str, torch.Tensor]:
    """name -> tensor on the file's memory map: plain torch tensors for F32 / F16 / BF16 / F64, `GGUFParameter`s
    (raw blocks as int8, `quant_type`, `logical_shape`) for quantized tensors."""
    reader = _open(path)
    tensors = {}
    for tensor in reader.tensors:
        shape, data = _shape(reader, tensor), torch.from_numpy(tensor.data)
        if tensor.tensor_type in QUANTIZED_TYPES:
            parameter = GGUFParameter(data.view(torch.int8), quant_type=tensor.tensor_type)
            parameter.logical_shape = shape
            tensors[tensor.name] = parameter
        else:
            plain = {**_PLAIN, **_INTEGER}[tensor.tensor_type]
            tensors[tensor.name] = data.view(plain).reshape(shape)
    return tensors


def is_quantized(tensor) -> bool:
    return isinstance(tensor, GGUFParameter)


def tensor_shape(tensor: torch.Tensor) -> tuple[int, ...]:
    """The shape a tensor has in the model: for quantized tensors the logical one, not the bytes'.

    A quantized tensor split by a converter (fused qkv) loses `logical_shape`; its `quant_shape`, read off the
    bytes, is then the right one (only row splits of plain matrices happen).
    """
    if is_quantized(tensor):
        return tuple(getattr(tensor, "logical_shape", None) or tensor.quant_shape)
    return tuple(tensor.shape)


def to_compute_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A floating tensor cast to `dtype`; a quantized one stays quantized and records `dtype` as the dtype its layer
    computes in; other tensors as they are. The loaders' cast step for every tensor."""
    if is_quantized(tensor):
        tensor.compute_dtype = dtype
        return tensor
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def dequantize(weight: GGUFParameter, dtype: torch.dtype, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """The values of a quantized tensor in `dtype` (its logical shape unless `shape` is given).

    diffusers' torch block dequantisers, asked for float32 (by default they compute in float16, which rounds the
    Q8_0 and K-quant products): the same float32 products as gguf-py's reference `gguf.quants.dequantize`; then one
    cast to `dtype`.
    """
    block_size, type_size = GGML_QUANT_SIZES[weight.quant_type]
    blocks = weight.as_tensor().view(torch.uint8).reshape(-1, type_size)
    values = dequantize_functions[weight.quant_type](blocks, block_size, type_size, torch.float32)
    return values.to(dtype).reshape(shape or tensor_shape(weight))


class _Dequantizing:
    """A layer whose `weight` is a GGUFParameter: dequantised to `compute_dtype` at each call, then dropped."""

    compute_dtype: torch.dtype
    weight_shape: tuple[int, ...]

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.weight, self.compute_dtype, self.weight_shape)

    def _compute_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.to(self.compute_dtype)


class GGUFLinear(_Dequantizing, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.compute_dtype), self.dequantized_weight(), self._compute_bias())


class GGUFConv1d(_Dequantizing, nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x.to(self.compute_dtype), self.dequantized_weight(), self._compute_bias())


class GGUFConv2d(_Dequantizing, nn.Conv2d):
    forward = GGUFConv1d.forward


class GGUFConv3d(_Dequantizing, nn.Conv3d):
    forward = GGUFConv1d.forward


class GGUFEmbedding(_Dequantizing, nn.Embedding):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Only the rows looked up are dequantised: a GGUF matrix row is a whole number of blocks."""
        rows = GGUFParameter(self.weight.as_tensor()[ids], quant_type=self.weight.quant_type)
        return dequantize(rows, self.compute_dtype, (*ids.shape, self.embedding_dim))


_LAYERS = {nn.Linear: GGUFLinear, nn.Conv1d: GGUFConv1d, nn.Conv2d: GGUFConv2d, nn.Conv3d: GGUFConv3d,
           nn.Embedding: GGUFEmbedding}


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """`model.load_state_dict(state_dict, strict=True, assign=True)`, quantized tensors included.

    A quantized weight of a Linear / Conv / Embedding stays quantized: the module becomes the matching dequantising
    layer (its class is swapped, so every attribute it has, stride and padding included, stays as it was). Any
    other quantized tensor (norms, modulation tables) is dequantised now to its compute dtype. The caller has
    checked the keys and shapes (the quantized ones' logical shapes) against the model.
    """
    quantized = {k: v for k, v in state_dict.items() if is_quantized(v)}
    if not quantized:
        model.load_state_dict(state_dict, strict=True, assign=True)
        return
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in quantized}, strict=False, assign=True)
    for key, tensor in quantized.items():
        module_name, _, name = key.rpartition(".")
        _adopt(model.get_submodule(module_name), name, tensor)


def _adopt(module: nn.Module, name: str, tensor: GGUFParameter) -> None:
    is_parameter = name in module._parameters
    shape = tuple((module._parameters if is_parameter else module._buffers)[name].shape)
    dtype = getattr(tensor, "compute_dtype", torch.float32)
    layer = _LAYERS.get(type(module))
    if name == "weight" and layer is not None:
        module.__class__ = layer
        module.compute_dtype, module.weight_shape = dtype, shape
        module._parameters["weight"] = tensor
    elif is_parameter:
        module._parameters[name] = nn.Parameter(dequantize(tensor, dtype, shape), requires_grad=False)
    else:
        module._buffers[name] = dequantize(tensor, dtype, shape)


def quantized_bytes(model: nn.Module) -> int:
    """Bytes held by the model's quantized weights (a tied weight counted once)."""
    seen = {id(p): p for p in model.parameters() if is_quantized(p)}
    return sum(p.numel() * p.element_size() for p in seen.values())
