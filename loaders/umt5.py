"""UMT5-XXL text encoder for Wan2.1: `transformers.UMT5EncoderModel` and its tokenizer from any of the usual layouts.

Layouts: an HF folder (config.json + model*.safetensors + tokenizer files; a full encoder-decoder checkpoint keeps
only its encoder), a diffusers Wan pipeline folder (`text_encoder/` + `tokenizer/`), Comfy-Org's single files
(umt5_xxl_fp16 / fp8_e4m3fn_scaled: HF key names, the sentencepiece model embedded as the uint8 tensor
`spiece_model`) and the original Wan release `models_t5_umt5-xxl-enc-bf16.pth` (Wan's own T5Encoder key names, no
tokenizer inside: spiece.model / tokenizer.json beside it or in `google/umt5-xxl/` beside it).

The tokenizer is always transformers' T5Tokenizer, as diffusers' WanPipeline and the original Wan code use, also
when it is built from an embedded sentencepiece model (ComfyUI itself calls sentencepiece directly; the two differ
only on characters the vocabulary lacks, which transformers maps to <unk> instead of byte pieces).
"""

from __future__ import annotations

import os
import re
from functools import partial

import torch
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from .checkpoint import (
    checkpoint_keys, load_folder_state_dict, load_state_dict, read_json, tensor_shapes, weight_files_in_folder,
)
from .detect import require_family
from .gguf import is_quantized, load_weights, to_compute_dtype
from .meta_build import key_mismatch, left_on_meta
from .storage import storage_preparer
from .tokenizer_files import SPIECE_KEY, TokenizerFiles, encoder_and_tokenizer_folders

UMT5_FAMILY = "UMT5 text encoder"
# Where the original Wan release keeps the tokenizer, relative to the folder of the .pth.
WAN_TOKENIZER_SUBFOLDER = os.path.join("google", "umt5-xxl")
# Sentinel tokens <extra_id_0..299> after the sentencepiece pieces: umT5's vocabulary (t5x
# examples/scalable_t5/umt5/vocab.gin). Only used when a tokenizer is built from a bare sentencepiece model.
UMT5_EXTRA_IDS = 300

# Values every umT5 size shares, from google/umt5-xxl's config.json (= Wan-AI/Wan2.1-T2V-*-Diffusers
# text_encoder/config.json). The sizes come from the tensors; for umt5-xxl they are d_model 4096, d_ff 10240,
# num_layers 24, num_heads 64, d_kv 64, vocab_size 256384, relative_attention_num_buckets 32.
_UMT5_COMMON = dict(
    feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, relative_attention_max_distance=128,
    dropout_rate=0.1, initializer_factor=1.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    is_encoder_decoder=True, tie_word_embeddings=False,
)

_EMBED_KEYS = ("shared.weight", "encoder.embed_tokens.weight")
_BIAS_KEY = "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"
_SHAPE_KEYS = ("encoder.block.0.layer.0.SelfAttention.q.weight", "encoder.block.0.layer.1.DenseReluDense.wi_0.weight",
               _BIAS_KEY.format(0))

# Original Wan T5Encoder (wan/modules/t5.py, shared_pos=False) -> UMT5EncoderModel. Neither transformers nor
# diffusers ships this conversion (diffusers' Wan converter loads google/umt5-xxl instead), so it is written here.
# ffn.gate.0 is the GELU branch (wi_0), ffn.fc1 the linear branch (wi_1); the per-block pos_embedding is UMT5's
# per-layer relative attention bias.
_WAN_TOP_LEVEL = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
_WAN_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}

# llama.cpp's T5-encoder names (gguf's MODEL_TENSOR.ENC_* and TOKEN_EMBD), as city96's umt5-xxl-encoder GGUFs use
# them -> UMT5EncoderModel.
_LLAMA_CPP_TOP_LEVEL = {
    "token_embd.weight": "shared.weight", "enc.output_norm.weight": "encoder.final_layer_norm.weight",
}
_LLAMA_CPP_BLOCK = {
    "attn_norm": "layer.0.layer_norm", "attn_q": "layer.0.SelfAttention.q", "attn_k": "layer.0.SelfAttention.k",
    "attn_v": "layer.0.SelfAttention.v", "attn_o": "layer.0.SelfAttention.o",
    "attn_rel_b": "layer.0.SelfAttention.relative_attention_bias", "ffn_norm": "layer.1.layer_norm",
    "ffn_gate": "layer.1.DenseReluDense.wi_0", "ffn_up": "layer.1.DenseReluDense.wi_1",
    "ffn_down": "layer.1.DenseReluDense.wo",
}

# ComfyUI's scaled-fp8 files: a `scaled_fp8` marker tensor, and per quantised Linear `<layer>.scale_weight`
# (and, when made for fp8 matmuls, `<layer>.scale_input`, which only scales activations).
_SCALED_FP8_MARKER, _SCALE_WEIGHT, _SCALE_INPUT = "scaled_fp8", ".scale_weight", ".scale_input"
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def _wan_key_to_hf(key: str) -> str:
    if key in _WAN_TOP_LEVEL:
        return _WAN_TOP_LEVEL[key]
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if match and match.group(2) in _WAN_BLOCK:
        return f"encoder.block.{match.group(1)}.{_WAN_BLOCK[match.group(2)]}"
    return key  # left as it is, so the strict key check names it as unexpected


def _is_wan_layout(keys) -> bool:
    return any(k == "token_embedding.weight" or k.startswith("blocks.") for k in keys)


def _llama_cpp_key_to_hf(key: str) -> str:
    if key in _LLAMA_CPP_TOP_LEVEL:
        return _LLAMA_CPP_TOP_LEVEL[key]
    match = re.fullmatch(r"enc\.blk\.(\d+)\.(\w+)\.weight", key)
    if match and match.group(2) in _LLAMA_CPP_BLOCK:
        return f"encoder.block.{match.group(1)}.{_LLAMA_CPP_BLOCK[match.group(2)]}.weight"
    return key  # left as it is, so the strict key check names it as unexpected


def to_umt5_keys(state_dict: dict) -> dict:
    """The state dict (tensors or shapes) under UMT5EncoderModel's names, embeddings tied.

    Wan's original names and llama.cpp's (GGUF files) are mapped; HF names stay; a full encoder-decoder checkpoint
    loses `decoder.*` and `lm_head.*`. The embedding is stored once (`shared.weight`, Comfy / save_pretrained /
    `token_embd`) or twice (state_dict dumps); the model holds it under both names, one tensor, `shared` winning as
    in transformers.
    """
    if _is_wan_layout(state_dict):
        state_dict = {_wan_key_to_hf(k): v for k, v in state_dict.items()}
    elif "token_embd.weight" in state_dict:
        state_dict = {_llama_cpp_key_to_hf(k): v for k, v in state_dict.items()}
    else:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(("decoder.", "lm_head."))}
    embedding = next((state_dict[k] for k in _EMBED_KEYS if k in state_dict), None)
    if embedding is not None:
        state_dict.update(dict.fromkeys(_EMBED_KEYS, embedding))
    return state_dict


def infer_umt5_config(shapes: dict[str, tuple[int, ...]]) -> UMT5Config:
    """A UMT5Config from encoder key shapes (UMT5EncoderModel names), for single files that carry no config.

    vocab and d_model from the embedding, d_ff from wi_0, layers counted, buckets and heads from the relative
    attention bias [num_buckets, num_heads] that every umT5 layer has; d_kv = q's output / heads. Reading the heads
    off the bias is exact for any size, where a fixed d_kv of 64 would only hold for the released ones.
    """
    missing = [k for k in (_EMBED_KEYS[0], *_SHAPE_KEYS) if k not in shapes]
    if missing:
        raise ValueError(f"The UMT5 weights lack {missing}: not a complete umT5 encoder (a single shard of a "
                         f"sharded model? give the folder that holds all shards and config.json instead).")
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.block\.(\d+)\.", k)))
    if layers > 1 and _BIAS_KEY.format(1) not in shapes:
        raise ValueError("These weights are a T5 encoder (one relative position bias shared by all layers, as "
                         "t5xxl for Flux / SD3), not umT5, which has one per layer. Wan needs umt5-xxl.")
    vocab, d_model = shapes[_EMBED_KEYS[0]]
    buckets, heads = shapes[_BIAS_KEY.format(0)]
    inner = shapes[_SHAPE_KEYS[0]][0]
    if inner % heads:
        raise ValueError(f"UMT5 attention width {inner} is not a multiple of its {heads} heads.")
    return UMT5Config(
        vocab_size=vocab, d_model=d_model, d_ff=shapes[_SHAPE_KEYS[1]][0], num_layers=layers,
        num_decoder_layers=layers, num_heads=heads, d_kv=inner // heads, relative_attention_num_buckets=buckets,
        **_UMT5_COMMON,
    )


def umt5_on_meta(config: UMT5Config) -> UMT5EncoderModel:
    """The encoder with every tensor on the meta device: no memory until real weights are assigned."""
    with torch.device("meta"):
        return UMT5EncoderModel(config)


def _weights_dtype(state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None) -> torch.dtype:
    """The requested dtype, else the embedding's; files holding fp8 or GGUF-quantized weights compute in bf16 (fp8's
    range, no fp16 overflow)."""
    if dtype is not None:
        return dtype
    if any(v.dtype in _FP8_DTYPES or is_quantized(v) for v in state_dict.values()):
        return torch.bfloat16
    return next(state_dict[k].dtype for k in _EMBED_KEYS if k in state_dict)


def _keeps_fp32(key: str, dtype: torch.dtype) -> bool:
    """transformers' `_keep_in_fp32_modules` rule: in fp16 the FFN output `wo` stays fp32 (umT5's activations
    overflow fp16 there; the forward also clamps infs in fp16). from_pretrained(dtype=float16) does the same."""
    return dtype == torch.float16 and any(m in key.split(".") for m in UMT5EncoderModel._keep_in_fp32_modules)


def cast_and_dequantise(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor in its compute dtype, scaled fp8 weights multiplied by their scale.

    As ComfyUI's scaled_fp8 Linear computes it (comfy/ops.py): weight.to(compute dtype) * scale_weight.to(compute
    dtype). Unscaled fp8 tensors are only cast (comfy's manual_cast); the marker and input scales are dropped.
    """
    out = {}
    for key, value in state_dict.items():
        if key == _SCALED_FP8_MARKER or key.endswith((_SCALE_WEIGHT, _SCALE_INPUT)):
            continue
        target = torch.float32 if _keeps_fp32(key, dtype) else dtype
        value = to_compute_dtype(value, target)
        scale = state_dict.get(key.removesuffix(".weight") + _SCALE_WEIGHT) if key.endswith(".weight") else None
        out[key] = value * scale.to(target) if scale is not None else value
    return out


def _check_keys(model: UMT5EncoderModel, state_dict: dict[str, torch.Tensor]) -> None:
    """Strict: every model tensor present with its shape, nothing left over; names the offenders."""
    mismatch = key_mismatch(model, tensor_shapes(state_dict))
    missing, unexpected = sorted(mismatch.missing), sorted(mismatch.unexpected)
    wrong = sorted(k for k, _, _ in mismatch.wrong_shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"The UMT5 weights do not fit the encoder built from their config: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), wrong shape {wrong[:5]}."
        )


def build_umt5(config: UMT5Config, state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None,
               storage: torch.dtype | None = None) -> UMT5EncoderModel:
    """The encoder built on meta and given the tensors (assign=True: one copy of the weights), eval, no grad.

    UMT5EncoderModel has no buffers (the relative position buckets are computed in forward), so nothing else needs
    materialising; the embedding is re-tied so `shared` and `encoder.embed_tokens` stay one module. `storage`: see
    loaders/storage.py (fp8 files keep their fp8 weights and scales).
    """
    compute = _weights_dtype(state_dict, dtype)
    model = umt5_on_meta(config)
    state_dict = storage_preparer(compute, storage, partial(cast_and_dequantise, dtype=compute))(model, state_dict)
    _check_keys(model, state_dict)
    load_weights(model, state_dict)
    model.set_input_embeddings(model.shared)
    still_meta = left_on_meta(model)
    if still_meta:
        raise RuntimeError(f"UMT5 tensors left unloaded on the meta device: {still_meta[:5]}")
    return model.eval().requires_grad_(False)


def _check_family(keys, path: str) -> None:
    name = os.path.basename(path.rstrip(os.sep))
    require_family(keys, UMT5_FAMILY, lambda family: (
        f"'{name}' was detected as: {family}. Wan needs the UMT5-XXL text encoder (umt5_xxl_fp16 / "
        "umt5_xxl_fp8_e4m3fn_scaled / models_t5_umt5-xxl-enc-bf16.pth)."))


def tokenizer_from_folder(folder: str) -> T5Tokenizer:
    """umT5's tokenizer from tokenizer.json and/or spiece.model, right-padded (Wan trims each prompt's padding).

    A folder without tokenizer_config.json gets umT5's 300 sentinel tokens, as google/umt5-xxl's config declares.
    """
    has_config = os.path.isfile(os.path.join(folder, "tokenizer_config.json"))
    kwargs = {} if has_config else {"extra_ids": UMT5_EXTRA_IDS}
    tokenizer = T5Tokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
    tokenizer.padding_side = "right"
    return tokenizer


UMT5_TOKENIZER = TokenizerFiles(
    model="umT5", spm_file="spiece.model", from_folder=tokenizer_from_folder,
    remedy=(f"Put google/umt5-xxl's spiece.model (or tokenizer.json) next to the weights or in a "
            f"'{WAN_TOKENIZER_SUBFOLDER}' folder beside them (as the Wan2.1 release ships it), or use a file that "
            f"embeds it (Comfy-Org's umt5_xxl_fp16.safetensors)."),
)


def _folder_config(config_path: str) -> UMT5Config:
    config = read_json(config_path)
    if config.get("model_type") != "umt5":
        raise ValueError(
            f"'{config_path}' describes a '{config.get('model_type')}' model; Wan needs umT5 (model_type umt5)."
        )
    return UMT5Config.from_pretrained(os.path.dirname(config_path), local_files_only=True)


def _load_folder(path: str, dtype: torch.dtype | None,
                 storage: torch.dtype | None) -> tuple[UMT5EncoderModel, T5Tokenizer]:
    encoder_dir, tokenizer_dirs = encoder_and_tokenizer_folders(path)
    files = weight_files_in_folder(encoder_dir, "model")
    _check_family({k for f in files for k in checkpoint_keys(f)}, path)
    tokenizer_dir = UMT5_TOKENIZER.require(path, tokenizer_dirs)
    state_dict = to_umt5_keys(load_folder_state_dict(encoder_dir, "model"))
    config_path = os.path.join(encoder_dir, "config.json")
    if os.path.isfile(config_path):
        config = _folder_config(config_path)
    else:
        config = infer_umt5_config(tensor_shapes(state_dict))
    return build_umt5(config, state_dict, dtype, storage), tokenizer_from_folder(tokenizer_dir)


def _load_single_file(path: str, dtype: torch.dtype | None,
                      storage: torch.dtype | None) -> tuple[UMT5EncoderModel, T5Tokenizer]:
    keys = checkpoint_keys(path)
    _check_family(keys, path)
    config = infer_umt5_config(to_umt5_keys({k: shape for k, (shape, _) in keys.items()}))
    # Beside the file: its own folder, or google/umt5-xxl in it as the Wan release ships.
    folder = os.path.dirname(os.path.abspath(path))
    beside = [folder, os.path.join(folder, WAN_TOKENIZER_SUBFOLDER)]
    tokenizer_dir = None if SPIECE_KEY in keys else UMT5_TOKENIZER.require(path, beside)
    state_dict = load_state_dict(path)
    tokenizer = UMT5_TOKENIZER.pop_from(state_dict, tokenizer_dir)
    return build_umt5(config, to_umt5_keys(state_dict), dtype, storage), tokenizer


def load_umt5_encoder(path: str, dtype: torch.dtype | None = None,
                      storage: torch.dtype | None = None) -> tuple[UMT5EncoderModel, T5Tokenizer]:
    """Wan's text encoder: UMT5EncoderModel (eval mode) and its tokenizer.

    `dtype` None keeps the file's dtype (bf16 for fp8 files); float16 keeps `wo` in float32 as transformers does.
    `storage` (fp8 / bf16) holds the Linear weights but `wo` in that dtype, computed in `dtype` (loaders/storage.py).
    `path` is an HF / diffusers pipeline folder, a Comfy-Org safetensors file or the original Wan .pth. The family,
    the shapes and the tokenizer are checked before any weight is read (from the safetensors header; a .pth is
    mapped lazily), so a wrong or incomplete pick fails at once with a ValueError that says what to do.
    """
    if os.path.isdir(path):
        return _load_folder(path, dtype, storage)
    if os.path.isfile(path):
        return _load_single_file(path, dtype, storage)
    raise ValueError(f"'{path}' is neither a UMT5 model folder nor a weights file.")
