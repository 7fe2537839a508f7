"""Gemma-2 text encoder for Sana: the decoder (`Gemma2Model`) and its tokenizer from any of the usual file layouts.

Layouts: an HF folder (config.json + model*.safetensors + tokenizer files), a diffusers Sana pipeline folder
(`text_encoder/` + `tokenizer/`), a single safetensors file with the sentencepiece model embedded as the uint8 tensor
`spiece_model` (Comfy-Org's gemma_2_2b files, as ComfyUI's Lumina 2 loader reads them), or a single file with
tokenizer.model / tokenizer.json beside it.
"""

from __future__ import annotations

import os
import re
from functools import partial

import torch
from transformers import Gemma2Config, Gemma2Model, GemmaTokenizer

from .checkpoint import (
    checkpoint_keys, load_folder_state_dict, load_state_dict, read_json, strip_prefix, tensor_shapes,
    weight_files_in_folder,
)
from .detect import require_family
from .meta_build import COMPUTE_DTYPES, cast_floats, left_on_meta
from .storage import storage_preparer
from .tokenizer_files import SPIECE_KEY, TokenizerFiles, encoder_and_tokenizer_folders

GEMMA_FAMILY = "Gemma-2 text encoder"

# Values shared by every Gemma-2 size (google/gemma-2-{2b,9b,27b}{,-it} config.json); shapes come from the weights.
_GEMMA2_COMMON = dict(
    hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, max_position_embeddings=8192,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, sliding_window=4096,
    attn_logit_softcapping=50.0, final_logit_softcapping=30.0, pad_token_id=0, eos_token_id=1, bos_token_id=2,
)

# Attention geometry of the released sizes, keyed by hidden size: it cannot be read from shapes alone
# (q_proj only gives heads * head_dim). (num_attention_heads, num_key_value_heads, head_dim, query_pre_attn_scalar)
_KNOWN_ATTENTION = {
    2304: (8, 4, 256, 256),  # gemma-2-2b(-it): Sana's text encoder
    3584: (16, 8, 256, 256),  # gemma-2-9b
    4608: (32, 16, 128, 144),  # gemma-2-27b
}

# Prefix of the decoder inside Gemma2ForCausalLM files and Comfy-Org's single files; `lm_head.` is dropped with it.
_DECODER_PREFIXES = ("model.",)

# The tensors whose shapes define the config of a single file.
_SHAPE_KEYS = ("embed_tokens.weight", "layers.0.mlp.gate_proj.weight", "layers.0.self_attn.q_proj.weight",
               "layers.0.self_attn.k_proj.weight")


def infer_gemma2_config(shapes: dict[str, tuple[int, ...]]) -> Gemma2Config:
    """A Gemma2Config from decoder key shapes (no prefix), for single files that carry no config.

    Sizes come from the tensors: vocab and hidden from embed_tokens, intermediate from gate_proj, layers counted.
    Heads: the released sizes are looked up by hidden size; any other model (tests' tiny ones) uses head_dim 256
    when q_proj's output is a multiple of 256 and 32 otherwise, heads = q_proj out / head_dim,
    kv heads = k_proj out / head_dim, query_pre_attn_scalar = head_dim.
    """
    missing = [k for k in _SHAPE_KEYS if k not in shapes]
    if missing:
        raise ValueError(
            f"The Gemma-2 weights lack {missing}: a single shard of a sharded model? Give the folder that holds all "
            f"shards and config.json instead."
        )
    vocab, hidden = shapes["embed_tokens.weight"]
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"layers\.(\d+)\.", k)))
    intermediate = shapes["layers.0.mlp.gate_proj.weight"][0]
    q_out = shapes["layers.0.self_attn.q_proj.weight"][0]
    kv_out = shapes["layers.0.self_attn.k_proj.weight"][0]
    if hidden in _KNOWN_ATTENTION:
        heads, kv_heads, head_dim, query_scale = _KNOWN_ATTENTION[hidden]
    else:
        head_dim = 256 if q_out % 256 == 0 else 32
        heads, kv_heads, query_scale = q_out // head_dim, kv_out // head_dim, head_dim
    return Gemma2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        query_pre_attn_scalar=query_scale, **_GEMMA2_COMMON,
    )


def gemma2_on_meta(config: Gemma2Config) -> Gemma2Model:
    """The decoder with every tensor on the meta device: no memory until real weights are assigned."""
    with torch.device("meta"):
        return Gemma2Model(config)


def _materialise_buffers(model: Gemma2Model) -> None:
    """Recompute the non-persistent buffers (no file holds them) that stayed on meta.

    They are built in float32 as transformers' from_pretrained builds them: RoPE frequencies in bf16 would shift
    every position's angle.
    """
    model.rotary_emb = type(model.rotary_emb)(model.config)
    model.embed_tokens.embed_scale = torch.tensor(model.config.hidden_size**0.5)
    still_meta = left_on_meta(model)
    if still_meta:
        raise RuntimeError(f"Gemma-2 tensors left unloaded on the meta device: {still_meta[:5]}")


def _weights_dtype(state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None) -> torch.dtype:
    """The requested dtype, else the file's; fp8 files are upcast to bf16 since the layers cannot compute in fp8."""
    if dtype is not None:
        return dtype
    file_dtype = next(v.dtype for v in state_dict.values() if v.is_floating_point())
    return file_dtype if file_dtype in COMPUTE_DTYPES else torch.bfloat16


def build_gemma2(config: Gemma2Config, state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None,
                 storage: torch.dtype | None = None) -> Gemma2Model:
    """The decoder built on meta and given the state dict's tensors (assign=True: one copy of the weights).

    `storage` (fp8 / bf16) holds the Linear weights in that dtype, computed in the model's (loaders/storage.py).
    """
    compute = _weights_dtype(state_dict, dtype)
    model = gemma2_on_meta(config)
    state_dict = storage_preparer(compute, storage, partial(cast_floats, dtype=compute))(model, state_dict)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"The Gemma-2 weights do not fit the model built from their config: {e}") from e
    _materialise_buffers(model)
    return model.eval().requires_grad_(False)


def _check_family(keys, path: str) -> None:
    name = os.path.basename(path.rstrip(os.sep))
    require_family(keys, GEMMA_FAMILY, lambda family: (
        f"'{name}' was detected as: {family}. Sana needs the Gemma-2 text encoder (gemma-2-2b-it): pick a Gemma-2 "
        "file or folder."))


def tokenizer_from_folder(folder: str) -> GemmaTokenizer:
    """Gemma's tokenizer from tokenizer.json and/or tokenizer.model, right-padded as Sana pads.

    BOS is forced on: Gemma-2 is trained with it and Sana's select_index keeps position 0 as the BOS token.
    """
    tokenizer = GemmaTokenizer.from_pretrained(folder, local_files_only=True, add_bos_token=True, add_eos_token=False)
    tokenizer.padding_side = "right"
    return tokenizer


GEMMA_TOKENIZER = TokenizerFiles(
    model="Gemma", spm_file="tokenizer.model", from_folder=tokenizer_from_folder,
    remedy=("Put gemma-2-2b-it's tokenizer.model (or tokenizer.json) next to the weights, or use a file that embeds "
            "it (Comfy-Org's gemma_2_2b_fp16.safetensors)."),
)


def _load_folder(path: str, dtype: torch.dtype | None,
                 storage: torch.dtype | None) -> tuple[Gemma2Model, GemmaTokenizer]:
    encoder_dir, tokenizer_dirs = encoder_and_tokenizer_folders(path)
    files = weight_files_in_folder(encoder_dir, "model")
    _check_family({k for f in files for k in checkpoint_keys(f)}, path)
    tokenizer_dir = GEMMA_TOKENIZER.require(path, tokenizer_dirs)
    state_dict = strip_prefix(load_folder_state_dict(encoder_dir, "model"), _DECODER_PREFIXES)
    config_path = os.path.join(encoder_dir, "config.json")
    if os.path.isfile(config_path):
        config = _folder_config(config_path)
    else:
        config = infer_gemma2_config(tensor_shapes(state_dict))
    return build_gemma2(config, state_dict, dtype, storage), tokenizer_from_folder(tokenizer_dir)


def _folder_config(config_path: str) -> Gemma2Config:
    config = read_json(config_path)
    if config.get("model_type") != "gemma2":
        raise ValueError(
            f"'{config_path}' describes a '{config.get('model_type')}' model; Sana needs Gemma-2 (model_type gemma2)."
        )
    return Gemma2Config.from_pretrained(os.path.dirname(config_path), local_files_only=True)


def _load_single_file(path: str, dtype: torch.dtype | None,
                      storage: torch.dtype | None) -> tuple[Gemma2Model, GemmaTokenizer]:
    keys = checkpoint_keys(path)
    _check_family(keys, path)
    folder = os.path.dirname(os.path.abspath(path))
    tokenizer_dir = None if SPIECE_KEY in keys else GEMMA_TOKENIZER.require(path, [folder])
    state_dict = load_state_dict(path)
    tokenizer = GEMMA_TOKENIZER.pop_from(state_dict, tokenizer_dir)
    state_dict = strip_prefix(state_dict, _DECODER_PREFIXES)
    return build_gemma2(infer_gemma2_config(tensor_shapes(state_dict)), state_dict, dtype, storage), tokenizer


def load_gemma_text_encoder(path: str, dtype: torch.dtype | None = None,
                            storage: torch.dtype | None = None) -> tuple[Gemma2Model, GemmaTokenizer]:
    """Sana's text encoder: the Gemma-2 decoder (eval mode; `dtype` None keeps the file's) and its tokenizer.

    `storage` (fp8 / bf16) holds the Linear weights in that dtype, computed in the model's (loaders/storage.py).

    `path` is an HF / diffusers pipeline folder or a single safetensors file. The family and the tokenizer are
    checked from the headers before any weight is read, so a wrong or incomplete pick fails at once with a
    ValueError that says what to do.
    """
    if os.path.isdir(path):
        return _load_folder(path, dtype, storage)
    if os.path.isfile(path):
        return _load_single_file(path, dtype, storage)
    raise ValueError(f"'{path}' is neither a Gemma-2 model folder nor a weights file.")
