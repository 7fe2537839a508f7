"""GGUF files for the tests and the quantization benchmark: models quantized as the files people download are.

Naming and tensor-type conventions of the real files:
- Wan2.1 (city96's Wan GGUFs, ComfyUI-GGUF tools/convert.py + lcpp.patch): original Wan key names, architecture
  "wan"; only the 2-D weights inside `blocks.` are quantized (patch / text / time embeddings, img_emb and head stay
  in the source precision), 1-D tensors and the `.modulation` tables F32 with their 3 dims, the 5-D patch embedding
  F32 (added back by fix_5d_tensors.py);
- UMT5 (city96's umt5-xxl-encoder GGUFs, llama.cpp's T5 encoder names): `token_embd`, `enc.blk.N.attn_q` ...,
  `enc.output_norm`, architecture "t5encoder"; the relative attention biases never quantized (llama-quantize skips
  `attn_rel_b`), norms F32;
- Sana (no reference converter exists): original or diffusers names, 1x1 convolutions stored as 2-D matrices with
  city96's `comfy.gguf.orig_shape.<name>` metadata so they can be quantized.
A matrix whose rows are not whole blocks of the chosen type falls back to F16 in Wan and UMT5 files (city96's
llama-quantize patch), to llama.cpp's own fallbacks (Q4_K -> Q5_0, Q5_K -> Q5_1, then F16) in Sana files, whose
2240-wide rows are no whole number of 256-value K-quant blocks.
"""

from __future__ import annotations

import re

import gguf
import numpy as np
import torch

from tiny_sana import diffusers_to_original as sana_to_original
from tiny_wan import diffusers_to_original as wan_to_original

T = gguf.GGMLQuantizationType
QK_K = 256
K_QUANT_LEVELS = {T.Q4_K: 15, T.Q5_K: 31}
ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."  # as loaders/gguf.py reads it; the spelling is city96's

# Wan tensors llama-quantize leaves unquantized (lcpp.patch, LLM_ARCH_WAN).
_WAN_UNQUANTIZED = ("modulation", "patch_embedding.", "text_embedding.", "time_projection.", "time_embedding.",
                    "img_emb.", "head.")
_WAN_F32 = (".modulation", "head.modulation")
# HF UMT5 names -> llama.cpp's (gguf MODEL_TENSOR.ENC_*), written independently of the loader's map.
_UMT5_TO_LLAMA_CPP = {
    "layer.0.layer_norm": "attn_norm", "layer.0.SelfAttention.q": "attn_q", "layer.0.SelfAttention.k": "attn_k",
    "layer.0.SelfAttention.v": "attn_v", "layer.0.SelfAttention.o": "attn_o",
    "layer.0.SelfAttention.relative_attention_bias": "attn_rel_b", "layer.1.layer_norm": "ffn_norm",
    "layer.1.DenseReluDense.wi_0": "ffn_gate", "layer.1.DenseReluDense.wi_1": "ffn_up",
    "layer.1.DenseReluDense.wo": "ffn_down",
}


def _f16_up(values: np.ndarray) -> np.ndarray:
    """float16 values no smaller than `values` (rounded up where rounding to nearest went down)."""
    half = values.astype(np.float16)
    return np.where(half.astype(np.float32) < values, np.nextafter(half, np.float16(np.inf)), half)


def _pack_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins -> the 12 bytes of a K-quant super-block (the layout of ggml's get_scale_min_k4:
    bytes 0-3 scales 0-3 + high bits of scales 4-7, bytes 4-7 the same for the mins, bytes 8-11 the low nibbles of
    scales and mins 4-7)."""
    low, high = slice(0, 4), slice(4, 8)
    return np.concatenate([
        (sc[:, low] & 63) | ((sc[:, high] >> 4) << 6),
        (m[:, low] & 63) | ((m[:, high] >> 4) << 6),
        (sc[:, high] & 15) | ((m[:, high] & 15) << 4),
    ], axis=1).astype(np.uint8)


def quantize_k(array: np.ndarray, qtype: T) -> np.ndarray:
    """Q4_K or Q5_K blocks (uint8, rows of bytes) of a float array whose last dimension is a multiple of 256.

    gguf-py quantizes Q8_0, Q4_0, ... but not the K-quants (NotImplementedError), hence this one. It is a plain
    min/max quantizer, not llama.cpp's search for the scales of least error (llama.cpp's files are somewhat more
    precise at the same size). A 256-value super-block has an fp16 scale d and min dmin, each of its eight 32-value
    sub-blocks a 6-bit scale sc and min m, and value = d*sc*q - dmin*m with q in 0..15 (Q4_K) or 0..31 (Q5_K). Mins
    and scales are rounded up, so every value of a sub-block lies in its range and is off by at most half its step
    d*sc.
    """
    levels = K_QUANT_LEVELS[qtype]
    rows = array.reshape(-1, array.shape[-1]).astype(np.float32)
    sub = rows.reshape(-1, 8, 32)
    low = np.minimum(sub.min(axis=2), 0)
    high = np.maximum(sub.max(axis=2), low)
    dmin = _f16_up(-low.min(axis=1) / 63)
    dmin32 = dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(dmin32 > 0, np.ceil(-low / dmin32), 0).clip(0, 63).astype(np.uint8)
        offset = dmin32 * m.astype(np.float32)
        need = (high + offset) / levels
        d = _f16_up(need.max(axis=1) / 63)
        d32 = d.astype(np.float32)[:, None]
        sc = np.where(d32 > 0, np.ceil(need / d32), 0).clip(0, 63).astype(np.uint8)
        step = (d32 * sc.astype(np.float32))[:, :, None]
        q = np.where(step > 0, np.rint((sub + offset[:, :, None]) / step), 0).clip(0, levels).astype(np.uint8)
    parts = [d[:, None].view(np.uint8), dmin[:, None].view(np.uint8), _pack_scales(sc, m)]
    if qtype == T.Q5_K:
        high_bits = ((q >> 4) & 1) << np.arange(8, dtype=np.uint8)[None, :, None]
        parts.append(high_bits.sum(axis=1, dtype=np.uint8))
    nibbles = q & 15
    parts.append((nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).reshape(-1, 128))
    blocks = np.concatenate(parts, axis=1)
    return blocks.reshape(*array.shape[:-1], -1)


def quantize(array: np.ndarray, qtype: T) -> np.ndarray:
    """The bytes (or F32 / F16 values) gguf stores for `array` in `qtype`."""
    if qtype in K_QUANT_LEVELS:
        return quantize_k(array, qtype)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def block_fits(shape: tuple[int, ...], qtype: T) -> bool:
    return shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0


def write_gguf(path: str, tensors: dict[str, tuple[np.ndarray, T]], architecture: str,
               orig_shapes: dict[str, tuple[int, ...]] | None = None) -> str:
    """Write name -> (float array, type) as a GGUF file; `orig_shapes` adds city96's original-shape metadata."""
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, shape in (orig_shapes or {}).items():
        writer.add_array(ORIG_SHAPE_KEY + name, list(shape))
    for name, (array, qtype) in tensors.items():
        writer.add_tensor(name, quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().contiguous().numpy()


# upstream llama.cpp (llama_tensor_get_type): the type a K-quant falls back to for rows that are not 256-multiples
_LLAMA_CPP_FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1}


def _matrix_type(shape: tuple[int, ...], qtype: T, fallback: dict | None = None) -> T:
    for kind in (qtype, (fallback or {}).get(qtype)):
        if kind is not None and block_fits(shape, kind):
            return kind
    return T.F16


def wan_gguf_tensors(model, qtype: T, plain: T = T.BF16) -> dict[str, tuple[np.ndarray, T]]:
    """A diffusers Wan transformer as city96's Wan GGUFs hold it (original names)."""
    tensors = {}
    for name, tensor in wan_to_original(model.state_dict()).items():
        array = _numpy(tensor)
        if array.ndim == 1 or name.endswith(_WAN_F32) or name == "patch_embedding.weight":
            kind = T.F32
        elif any(part in name for part in _WAN_UNQUANTIZED) or not name.startswith("blocks."):
            kind = plain
        else:
            kind = _matrix_type(array.shape, qtype)
        tensors[name] = (array, kind)
    return tensors


def write_wan_gguf(model, path: str, qtype: T, plain: T = T.BF16) -> str:
    return write_gguf(path, wan_gguf_tensors(model, qtype, plain), "wan")


def write_sana_gguf(model, path: str, qtype: T, original: bool = True) -> str:
    """A diffusers Sana transformer in original (fused qkv) or diffusers names; 1x1 convolutions as matrices."""
    state_dict = model.state_dict()
    if original:
        state_dict = sana_to_original(state_dict, model.config)
    tensors, orig_shapes = {}, {}
    for name, tensor in state_dict.items():
        array = _numpy(tensor)
        if array.ndim == 4 and array.shape[2:] == (1, 1):
            orig_shapes[name] = array.shape
            array = array.reshape(array.shape[:2])
        if array.ndim == 1 or array.size <= 1024 or name.endswith("scale_shift_table"):
            kind = T.F32  # small tensors, and the modulation tables as city96 keeps them (keys_hiprec)
        elif array.ndim == 2:
            kind = _matrix_type(array.shape, qtype, _LLAMA_CPP_FALLBACK)
        else:
            kind = T.F16
        tensors[name] = (array, kind)
    return write_gguf(path, tensors, "sana", {k: v for k, v in orig_shapes.items()})


def umt5_to_llama_cpp(name: str) -> str:
    if name == "shared.weight":
        return "token_embd.weight"
    if name == "encoder.final_layer_norm.weight":
        return "enc.output_norm.weight"
    block = re.fullmatch(r"encoder\.block\.(\d+)\.(.+)\.weight", name)
    return f"enc.blk.{block[1]}.{_UMT5_TO_LLAMA_CPP[block[2]]}.weight"


def write_umt5_gguf(model, path: str, qtype: T) -> str:
    """A UMT5EncoderModel as llama.cpp's T5-encoder GGUFs hold it (the embedding once, as token_embd)."""
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "encoder.embed_tokens.weight":
            continue
        array, new_name = _numpy(tensor), umt5_to_llama_cpp(name)
        kind = T.F32 if array.ndim == 1 or "attn_rel_b" in new_name else _matrix_type(array.shape, qtype)
        tensors[new_name] = (array, kind)
    return write_gguf(path, tensors, "t5encoder")


def reference_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file as float32, dequantized by gguf-py's reference `gguf.quants.dequantize`, in the
    model's shape (city96's orig_shape metadata applied)."""
    reader = gguf.GGUFReader(path)
    result = {}
    for tensor in reader.tensors:
        field = reader.get_field(ORIG_SHAPE_KEY + tensor.name)
        shape = [int(field.parts[i][0]) for i in field.data] if field else list(reversed(tensor.shape.tolist()))
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        result[tensor.name] = torch.from_numpy(np.array(values, dtype=np.float32)).reshape(shape)
    return result
