"""Gemma-2 loader in every layout, and Sana's prompt recipe against diffusers' SanaPipeline.encode_prompt."""

import json
import os

import pytest
import sentencepiece
import torch
from diffusers import SanaPipeline
from safetensors.torch import save_file

from sana_wan.loaders.gemma import gemma2_on_meta, infer_gemma2_config, load_gemma_text_encoder
from sana_wan.text.sana_prompt import SANA_CHI, SANA_DEFAULT_NEGATIVE, encode_sana_prompt
from tiny_gemma import PROMPTS, tiny_gemma2, tokenizer_from_spm, train_spm_bytes, write_gemma_layouts

LAYOUTS = ["hf_folder", "hf_folder_sharded", "pipeline_folder", "comfy_single", "single_with_tokenizer_beside"]
LONG_PROMPT = ", ".join(PROMPTS * 8)


@pytest.fixture(scope="module")
def spm_bytes():
    return train_spm_bytes()


@pytest.fixture(scope="module")
def source_tokenizer(spm_bytes):
    return tokenizer_from_spm(spm_bytes)


@pytest.fixture(scope="module")
def source_model(source_tokenizer):
    return tiny_gemma2(len(source_tokenizer))


@pytest.fixture(scope="module")
def layouts(source_model, source_tokenizer, spm_bytes, tmp_path_factory):
    return write_gemma_layouts(source_model, source_tokenizer, spm_bytes, str(tmp_path_factory.mktemp("gemma")))


@pytest.fixture(scope="module")
def loaded(layouts):
    return load_gemma_text_encoder(layouts["comfy_single"])


def test_tokenizer_matches_sentencepiece(spm_bytes, source_tokenizer):
    """The converted fast tokenizer splits text exactly as the sentencepiece model it came from (plus BOS)."""
    processor = sentencepiece.SentencePieceProcessor(model_proto=spm_bytes)
    texts = PROMPTS + ["\n".join(SANA_CHI) + PROMPTS[0], "  two  spaces\tand tab 12345 ünïcödé 日本 😀"]
    for text in texts:
        assert source_tokenizer(text).input_ids == [2] + processor.encode(text)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_loads_same_model_and_tokenizer(layout, layouts, source_model, source_tokenizer):
    decoder, tokenizer = load_gemma_text_encoder(layouts[layout])
    texts = PROMPTS + ["\n".join(SANA_CHI) + PROMPTS[1], LONG_PROMPT]
    assert tokenizer(texts).input_ids == source_tokenizer(texts).input_ids
    assert tokenizer.padding_side == "right" and tokenizer.pad_token_id == 0 and tokenizer.bos_token_id == 2
    assert not decoder.training and decoder.dtype == torch.float32
    inputs = source_tokenizer(PROMPTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = source_model.get_decoder()(**inputs)[0]
        assert torch.equal(decoder(**inputs)[0], expected)


def test_requested_dtype_keeps_rope_in_float32(layouts, source_model):
    decoder, _ = load_gemma_text_encoder(layouts["single_with_tokenizer_beside"], dtype=torch.bfloat16)
    assert decoder.dtype == torch.bfloat16
    assert torch.equal(decoder.rotary_emb.inv_freq, source_model.get_decoder().rotary_emb.inv_freq)


def test_fp8_file_is_upcast_to_bf16(layouts, source_model, tmp_path):
    state = {k: v.to(torch.float8_e4m3fn) for k, v in source_model.get_decoder().state_dict().items()}
    save_file(state, str(tmp_path / "gemma_fp8.safetensors"))
    (tmp_path / "tokenizer.model").write_bytes(open(os.path.join(os.path.dirname(
        layouts["single_with_tokenizer_beside"]), "tokenizer.model"), "rb").read())
    decoder, _ = load_gemma_text_encoder(str(tmp_path / "gemma_fp8.safetensors"))
    assert decoder.dtype == torch.bfloat16


def test_encode_matches_diffusers(loaded):
    """Positive (CHI, select_index) and negative ("" and a text) for prompts of different lengths, one truncated."""
    decoder, tokenizer = loaded
    prompts = [PROMPTS[2], "  A Cat  ", LONG_PROMPT]
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=decoder, vae=None, transformer=None, scheduler=None)
    common = dict(do_classifier_free_guidance=True, device="cpu", clean_caption=False,
                  complex_human_instruction=SANA_CHI)
    ref, ref_mask, ref_empty, ref_empty_mask = pipe.encode_prompt(prompts, negative_prompt="", **common)
    *_, ref_neg, ref_neg_mask = pipe.encode_prompt(prompts, negative_prompt="Blurry, low quality", prompt_embeds=ref,
                                                   prompt_attention_mask=ref_mask, **common)
    ours = [
        encode_sana_prompt(decoder, tokenizer, prompts),
        encode_sana_prompt(decoder, tokenizer, [SANA_DEFAULT_NEGATIVE] * 3, negative=True),
        encode_sana_prompt(decoder, tokenizer, ["Blurry, low quality"] * 3, negative=True),
    ]
    for (embeds, mask), (ref_embeds, ref_m) in zip(ours, [(ref, ref_mask), (ref_empty, ref_empty_mask),
                                                          (ref_neg, ref_neg_mask)]):
        assert embeds.shape == (3, 300, 64) and embeds.dtype == torch.float32
        assert torch.equal(mask, ref_m) and (embeds - ref_embeds).abs().max() <= 1e-6
    mask = ours[0][1]
    assert mask[:, 0].all() and mask[2].all() and not mask[1].all(), "BOS kept, long prompt fills the window"


def _manifest_shapes(manifests_dir):
    with open(os.path.join(manifests_dir, "gemma2_2b_it.json")) as f:
        tensors = json.load(f)["tensors"]
    return {k.removeprefix("model."): tuple(shape) for k, (shape, _) in tensors.items()}


def test_real_gemma2_2b_layout_on_meta(manifests_dir):
    shapes = _manifest_shapes(manifests_dir)
    config = infer_gemma2_config(shapes)
    real = dict(hidden_size=2304, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                intermediate_size=9216, vocab_size=256000, query_pre_attn_scalar=256, sliding_window=4096,
                rms_norm_eps=1e-6, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    assert {k: getattr(config, k) for k in real} == real
    model_shapes = {k: tuple(v.shape) for k, v in gemma2_on_meta(config).state_dict().items()}
    assert model_shapes == shapes


def test_umt5_file_is_refused_by_name(tmp_path):
    path = str(tmp_path / "umt5-xxl-enc.safetensors")
    save_file({"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": torch.zeros(32, 4),
               "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight": torch.zeros(32, 4),
               "shared.weight": torch.zeros(10, 4)}, path)
    with pytest.raises(ValueError, match="UMT5"):
        load_gemma_text_encoder(path)


def test_single_file_without_tokenizer_says_where_to_put_it(layouts, tmp_path):
    path = str(tmp_path / "gemma.safetensors")
    with open(layouts["single_with_tokenizer_beside"], "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    with pytest.raises(ValueError, match=r"tokenizer\.model.*" + str(tmp_path).replace("\\", "\\\\")):
        load_gemma_text_encoder(path)


def test_truncated_file_is_a_clear_error(layouts, tmp_path):
    data = open(layouts["comfy_single"], "rb").read()
    path = tmp_path / "gemma_2_2b_fp16.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_gemma_text_encoder(str(path))


def test_one_shard_alone_is_a_clear_error(layouts):
    with pytest.raises(ValueError, match="shard"):
        load_gemma_text_encoder(os.path.join(layouts["hf_folder_sharded"], "model-00003-of-00005.safetensors"))


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither"):
        load_gemma_text_encoder(str(tmp_path / "nothing_here"))
