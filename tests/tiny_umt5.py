"""Tiny umT5 text encoders for tests: a sentencepiece tokenizer trained on the fly, a seeded random UMT5EncoderModel,
and the model written in every on-disk layout the loader accepts. Nothing is downloaded."""

from __future__ import annotations

import io
import os
import tempfile

import sentencepiece
import torch
from safetensors.torch import save_file
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from pack_source import constant

WAN_DEFAULT_NEGATIVE = constant("text/wan_prompt.py", "WAN_DEFAULT_NEGATIVE")

PROMPTS = [
    "A cat walks on the grass, realistic style, close-up shot",
    "Two anthropomorphic cats in comfy boxing gear fight intensely on a spotlighted stage",
    "一只小狗在海滩上奔跑，夕阳西下，电影感镜头",
    "A drone shot over a snowy mountain village at dawn, smoke rising from 3 chimneys",
    "Underwater footage of a sea turtle gliding past a coral reef, 4k, slow motion",
    WAN_DEFAULT_NEGATIVE,
]

# T5's sentencepiece conventions: a unigram model, <pad> 0, </s> 1, <unk> 2 and no BOS (T5Tokenizer's fixed ids),
# nmt_nfkc normalisation and a dummy prefix (sentencepiece's defaults, as T5 / mT5 models have), byte fallback as
# in mT5's vocabulary.
_SPM_OPTIONS = dict(
    model_type="unigram", vocab_size=500, hard_vocab_limit=False, byte_fallback=True,
    pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", minloglevel=2,
)
UMT5_EXTRA_IDS = 300  # umT5's sentinel count (t5x examples/scalable_t5/umt5/vocab.gin)

# Follows the loader's inference rule: heads read from the relative attention bias [buckets, heads], d_kv = q / heads.
TINY_SIZES = dict(d_model=64, d_kv=32, num_heads=2, d_ff=128, num_layers=2, relative_attention_num_buckets=32)

# Test-only inverse of the loader's Wan mapping, written from wan/modules/t5.py (T5Encoder, shared_pos=False).
_HF_TO_WAN_BLOCK = {
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}
FP8_LINEARS = ("SelfAttention.q.", "SelfAttention.k.", "SelfAttention.v.", "SelfAttention.o.", "wi_0.", "wi_1.", "wo.")


def train_spm_bytes() -> bytes:
    """A serialized sentencepiece model trained in milliseconds on a few Wan prompts."""
    writer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(PROMPTS * 10), model_writer=writer, **_SPM_OPTIONS)
    return writer.getvalue()


def tokenizer_from_spm(spm_bytes: bytes) -> T5Tokenizer:
    """transformers' T5 tokenizer converted from the sentencepiece model, with umT5's sentinel tokens."""
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "spiece.model"), "wb") as f:
            f.write(spm_bytes)
        return T5Tokenizer.from_pretrained(folder, local_files_only=True, extra_ids=UMT5_EXTRA_IDS)


def tiny_umt5(vocab_size: int, seed: int = 0, **overrides) -> UMT5EncoderModel:
    """A float32 UMT5EncoderModel with every weight random (norms and each layer's relative bias too)."""
    config = UMT5Config(
        vocab_size=vocab_size, **{**TINY_SIZES, **overrides}, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6, relative_attention_max_distance=128, pad_token_id=0, eos_token_id=1,
    )
    model = UMT5EncoderModel(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval()


def quantise_scaled_fp8(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's scaled-fp8 layout: Linear weights as e4m3fn / scale with an fp32 `scale_weight`, the rest fp16,
    and the `scaled_fp8` marker."""
    out = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, value in state_dict.items():
        if any(name in key for name in FP8_LINEARS):
            scale = value.abs().max().float() / 448.0
            out[key] = (value / scale).to(torch.float8_e4m3fn)
            out[key.removesuffix("weight") + "scale_weight"] = scale
        else:
            out[key] = value.to(torch.float16)
    return out


def to_wan_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder under the original Wan T5Encoder names (token_embedding, blocks.N.*, norm)."""
    out = {"token_embedding.weight": state_dict["shared.weight"],
           "norm.weight": state_dict["encoder.final_layer_norm.weight"]}
    for key, value in state_dict.items():
        if key.startswith("encoder.block."):
            index, rest = key.removeprefix("encoder.block.").split(".", 1)
            out[f"blocks.{index}.{_HF_TO_WAN_BLOCK[rest]}"] = value
    return out


def _save_single(state_dict: dict[str, torch.Tensor], path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    return path


def comfy_state_dict(model: UMT5EncoderModel) -> dict[str, torch.Tensor]:
    """Comfy-Org's key set: HF names, the embedding once as `shared.weight`."""
    return {k: v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def write_umt5_layouts(model: UMT5EncoderModel, tokenizer, spm_bytes: bytes, directory: str) -> dict:
    """layout name -> path the loader is given, for every layout it accepts."""
    paths = {name: os.path.join(directory, name) for name in ("hf_folder", "pipeline_folder")}
    model.save_pretrained(paths["hf_folder"])
    tokenizer.save_pretrained(paths["hf_folder"])
    model.save_pretrained(os.path.join(paths["pipeline_folder"], "text_encoder"))
    tokenizer.save_pretrained(os.path.join(paths["pipeline_folder"], "tokenizer"))
    spiece = {"spiece_model": torch.frombuffer(bytearray(spm_bytes), dtype=torch.uint8)}
    comfy, comfy_dir = comfy_state_dict(model), os.path.join(directory, "comfy")
    paths["comfy_single"] = _save_single({**comfy, **spiece}, os.path.join(comfy_dir, "umt5_xxl_tiny.safetensors"))
    paths["comfy_fp8_scaled"] = _save_single({**quantise_scaled_fp8(comfy), **spiece},
                                             os.path.join(comfy_dir, "umt5_xxl_fp8_e4m3fn_scaled_tiny.safetensors"))
    wan_dir = os.path.join(directory, "wan")
    os.makedirs(wan_dir, exist_ok=True)
    paths["wan_original_pth"] = os.path.join(wan_dir, "models_t5_umt5-xxl-enc-bf16.pth")
    torch.save(to_wan_original(model.state_dict()), paths["wan_original_pth"])
    with open(os.path.join(wan_dir, "spiece.model"), "wb") as f:
        f.write(spm_bytes)
    return paths
