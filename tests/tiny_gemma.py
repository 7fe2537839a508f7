"""Tiny Gemma-2 text encoders for tests: a sentencepiece tokenizer trained on the fly, a seeded random model, and
the model written in every on-disk layout the loader accepts. Nothing is downloaded."""

from __future__ import annotations

import io
import os
import tempfile

import sentencepiece
import torch
from safetensors.torch import save_file
from transformers import Gemma2Config, Gemma2ForCausalLM, GemmaTokenizer

from pack_source import constant

SANA_CHI = constant("text/sana_prompt.py", "SANA_CHI")

PROMPTS = [
    "a photo of an astronaut riding a horse on the moon, 4k, highly detailed",
    "A cat sleeping on a sunny windowsill next to pots of red flowers",
    "a busy city street at night, neon signs reflected in puddles, cinematic lighting",
    "Portrait of an old fisherman with a grey beard, oil painting, dramatic light",
    "watercolor landscape: mountains, a lake and 3 small boats at sunrise",
]

# Gemma's sentencepiece settings (BPE, byte fallback, digits split, no dummy prefix, no normalisation) and its
# special-token ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3, then <mask> and the chat-turn markers.
_SPM_OPTIONS = dict(
    model_type="bpe", vocab_size=500, hard_vocab_limit=False, byte_fallback=True, split_digits=True,
    add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
    pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
    user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"], minloglevel=2,
)

# The tiny model follows the loader's inference rule for unknown sizes: q_proj out 128 is no multiple of 256, so
# head_dim 32 (4 heads, 2 kv heads) and query_pre_attn_scalar 32; the rest are Gemma-2's shared values.
TINY_SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32)


def train_spm_bytes() -> bytes:
    """A serialized sentencepiece model trained in milliseconds on the CHI text and a few prompts."""
    corpus = (SANA_CHI + PROMPTS) * 10
    writer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=writer, **_SPM_OPTIONS)
    return writer.getvalue()


def tokenizer_from_spm(spm_bytes: bytes) -> GemmaTokenizer:
    """transformers' Gemma tokenizer converted from the sentencepiece model, with BOS as gemma-2's config has it."""
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
            f.write(spm_bytes)
        return GemmaTokenizer.from_pretrained(folder, local_files_only=True, add_bos_token=True, add_eos_token=False)


def tiny_gemma2(vocab_size: int, seed: int = 0) -> Gemma2ForCausalLM:
    """A float32 Gemma2ForCausalLM with every weight random (norms too, so a wrong RMSNorm offset shows)."""
    config = Gemma2Config(
        vocab_size=vocab_size, **TINY_SIZES, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
        max_position_embeddings=8192, sliding_window=4096, attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    model = Gemma2ForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def _save_single(state_dict: dict[str, torch.Tensor], path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    return path


def write_gemma_layouts(model_for_causal_lm: Gemma2ForCausalLM, tokenizer, spm_bytes: bytes, directory: str) -> dict:
    """layout name -> path the loader is given, for every layout it accepts."""
    decoder = model_for_causal_lm.get_decoder()
    paths = {name: os.path.join(directory, name) for name in ("hf_folder", "hf_folder_sharded", "pipeline_folder")}
    model_for_causal_lm.save_pretrained(paths["hf_folder"])
    tokenizer.save_pretrained(paths["hf_folder"])
    model_for_causal_lm.save_pretrained(paths["hf_folder_sharded"], max_shard_size="100KB")
    tokenizer.save_pretrained(paths["hf_folder_sharded"])
    decoder.save_pretrained(os.path.join(paths["pipeline_folder"], "text_encoder"))
    tokenizer.save_pretrained(os.path.join(paths["pipeline_folder"], "tokenizer"))
    comfy = {"model." + k: v for k, v in decoder.state_dict().items()}
    comfy["spiece_model"] = torch.frombuffer(bytearray(spm_bytes), dtype=torch.uint8)
    paths["comfy_single"] = _save_single(comfy, os.path.join(directory, "comfy", "gemma_2_2b_tiny.safetensors"))
    beside = os.path.join(directory, "beside", "gemma_tiny.safetensors")
    paths["single_with_tokenizer_beside"] = _save_single(decoder.state_dict(), beside)
    with open(os.path.join(directory, "beside", "tokenizer.model"), "wb") as f:
        f.write(spm_bytes)
    return paths
