"""umT5 loader in every layout, and Wan's prompt recipe against diffusers' WanPipeline.encode_prompt."""

import json
import os
import shutil

import pytest
import sentencepiece
import torch
from diffusers import WanPipeline
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from diffusers.utils import is_ftfy_available
from safetensors.torch import load_file, save_file
from transformers import UMT5EncoderModel

from sana_wan.loaders.umt5 import infer_umt5_config, load_umt5_encoder, to_umt5_keys, umt5_on_meta
from sana_wan.text.wan_prompt import WAN_DEFAULT_NEGATIVE, clean_prompt, encode_wan_prompt
from tiny_umt5 import PROMPTS, comfy_state_dict, tiny_umt5, tokenizer_from_spm, train_spm_bytes, write_umt5_layouts

LAYOUTS = ["hf_folder", "pipeline_folder", "comfy_single", "wan_original_pth"]
LONG_PROMPT = ", ".join(PROMPTS[:5] * 4)
UMT5_XXL = dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=256384,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
                feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True)


@pytest.fixture(scope="module")
def spm_bytes():
    return train_spm_bytes()


@pytest.fixture(scope="module")
def source_tokenizer(spm_bytes):
    return tokenizer_from_spm(spm_bytes)


@pytest.fixture(scope="module")
def source_model(source_tokenizer):
    return tiny_umt5(len(source_tokenizer))


@pytest.fixture(scope="module")
def layouts(source_model, source_tokenizer, spm_bytes, tmp_path_factory):
    return write_umt5_layouts(source_model, source_tokenizer, spm_bytes, str(tmp_path_factory.mktemp("umt5")))


@pytest.fixture(scope="module")
def loaded(layouts):
    return load_umt5_encoder(layouts["comfy_single"])


def _hidden(model, tokenizer, texts=PROMPTS[:2]):
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def test_tokenizer_matches_sentencepiece(spm_bytes, source_tokenizer):
    """In-vocabulary text splits exactly as sentencepiece (ComfyUI's tokenizer) splits it, plus EOS, no BOS."""
    processor = sentencepiece.SentencePieceProcessor(model_proto=spm_bytes)
    for text in PROMPTS + [LONG_PROMPT]:
        assert source_tokenizer(text).input_ids == processor.encode(text) + [1]
    assert (source_tokenizer.pad_token_id, source_tokenizer.eos_token_id, source_tokenizer.unk_token_id) == (0, 1, 2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_loads_same_model_and_tokenizer(layout, layouts, source_model, source_tokenizer):
    encoder, tokenizer = load_umt5_encoder(layouts[layout])
    texts = PROMPTS + [LONG_PROMPT, "Hello <extra_id_0> ＡＢＣ 😀"]
    assert tokenizer(texts).input_ids == source_tokenizer(texts).input_ids
    assert len(tokenizer) == len(source_tokenizer) and tokenizer.padding_side == "right"
    assert not encoder.training and encoder.dtype == torch.float32
    assert encoder.shared is encoder.encoder.embed_tokens
    assert torch.equal(_hidden(encoder, tokenizer), _hidden(source_model, source_tokenizer))


def _dequantised_reference(path, config, dtype):
    """The fp8 file dequantised by hand as ComfyUI's scaled_fp8 Linear does it, in a plain UMT5EncoderModel."""
    raw = load_file(path)
    state = {}
    for key, value in raw.items():
        if key.endswith(".weight"):
            scale = raw.get(key.removesuffix("weight") + "scale_weight")
            state[key] = value.to(dtype) * scale.to(dtype) if scale is not None else value.to(dtype)
    state["encoder.embed_tokens.weight"] = state["shared.weight"]
    model = UMT5EncoderModel(config).to(dtype).eval()
    model.load_state_dict(state, strict=True)
    return model


@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_fp8_scaled_equals_dequantised_reference(dtype, layouts, source_model, source_tokenizer):
    encoder, tokenizer = load_umt5_encoder(layouts["comfy_fp8_scaled"], dtype=dtype)
    assert encoder.dtype == (dtype or torch.bfloat16), "fp8 files compute in bf16 unless asked otherwise"
    reference = _dequantised_reference(layouts["comfy_fp8_scaled"], encoder.config, dtype or torch.bfloat16)
    assert tokenizer(PROMPTS).input_ids == source_tokenizer(PROMPTS).input_ids
    hidden = _hidden(encoder, tokenizer)
    assert torch.equal(hidden, _hidden(reference, tokenizer))
    similarity = torch.cosine_similarity(hidden.float().flatten(), _hidden(source_model, tokenizer).flatten(), dim=0)
    assert similarity > 0.98, "the scales are applied the right way round: close to the unquantised model"


def test_float16_keeps_wo_in_float32_as_transformers(layouts):
    ours, _ = load_umt5_encoder(layouts["comfy_single"], dtype=torch.float16)
    theirs = UMT5EncoderModel.from_pretrained(layouts["hf_folder"], dtype=torch.float16)
    assert {k: v.dtype for k, v in ours.state_dict().items()} == {k: v.dtype for k, v in theirs.state_dict().items()}
    assert ours.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    assert ours.dtype == torch.float16


def test_file_dtype_is_kept(source_model, tmp_path, layouts):
    state = {k: v.to(torch.bfloat16) for k, v in comfy_state_dict(source_model).items()}
    save_file(state, str(tmp_path / "umt5_bf16.safetensors"))
    shutil.copy(os.path.join(layouts["hf_folder"], "tokenizer.json"), tmp_path)
    encoder, _ = load_umt5_encoder(str(tmp_path / "umt5_bf16.safetensors"))
    assert encoder.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in encoder.parameters())


def test_wan_release_tokenizer_in_google_umt5_xxl(layouts, source_model, source_tokenizer, tmp_path):
    """The original release: the .pth at the top, the tokenizer in google/umt5-xxl/ beside it."""
    path = shutil.copy(layouts["wan_original_pth"], tmp_path)
    source_tokenizer.save_pretrained(str(tmp_path / "google" / "umt5-xxl"))
    encoder, tokenizer = load_umt5_encoder(path)
    assert torch.equal(_hidden(encoder, tokenizer), _hidden(source_model, source_tokenizer))


def test_embedding_stored_only_as_encoder_embed_tokens(layouts, source_model, source_tokenizer, tmp_path):
    state = load_file(layouts["comfy_single"])
    state["encoder.embed_tokens.weight"] = state.pop("shared.weight")
    save_file(state, str(tmp_path / "umt5.safetensors"))
    encoder, tokenizer = load_umt5_encoder(str(tmp_path / "umt5.safetensors"))
    assert torch.equal(_hidden(encoder, tokenizer), _hidden(source_model, source_tokenizer))


def _pipe(encoder, tokenizer):
    return WanPipeline(tokenizer=tokenizer, text_encoder=encoder, transformer=None, vae=None, scheduler=None)


def test_encode_matches_diffusers(loaded):
    """Two prompts of different lengths and one truncated; positive and the default negative, at L = 32."""
    encoder, tokenizer = loaded
    prompts = ["  A cat &amp;amp; a\n dog ", PROMPTS[2], LONG_PROMPT]
    ref, ref_negative = _pipe(encoder, tokenizer).encode_prompt(
        prompts, negative_prompt=WAN_DEFAULT_NEGATIVE, max_sequence_length=32, device="cpu")
    embeds, mask = encode_wan_prompt(encoder, tokenizer, prompts, max_sequence_length=32)
    negative, negative_mask = encode_wan_prompt(encoder, tokenizer, [WAN_DEFAULT_NEGATIVE] * 3, max_sequence_length=32)
    assert embeds.shape == (3, 32, 64) and mask.dtype == torch.int64
    assert torch.equal(embeds, ref) and torch.equal(negative, ref_negative)
    lengths = mask.sum(1)
    assert lengths[0] < lengths[1] < 32 and lengths[2] == 32 and negative_mask.all(), "one short, one truncated"
    assert (embeds[0, lengths[0]:] == 0).all() and (embeds[0, : lengths[0]] != 0).any()


def test_encode_matches_diffusers_at_512(loaded):
    encoder, tokenizer = loaded
    ref = _pipe(encoder, tokenizer)._get_t5_prompt_embeds(PROMPTS[:2], max_sequence_length=512, device="cpu")
    embeds, mask = encode_wan_prompt(encoder, tokenizer, PROMPTS[:2])
    assert embeds.shape == (2, 512, 64) and mask.shape == (2, 512)
    assert torch.equal(embeds, ref)


@pytest.mark.skipif(is_ftfy_available(), reason="diffusers' prompt_clean applies ftfy when it is installed")
def test_clean_prompt_matches_diffusers_without_ftfy():
    texts = ["  a\u3000b\u00a0c\t\nd  ", "&amp;lt;tag&amp;gt; &quot;x&quot;", "x\x1cy\u2028z\u200bw", "", "   "]
    assert [clean_prompt(t) for t in texts] == [prompt_clean(t) for t in texts]


def _manifest_shapes(manifests_dir, name):
    with open(os.path.join(manifests_dir, name)) as f:
        return {k: tuple(shape) for k, (shape, _) in json.load(f)["tensors"].items()}


@pytest.mark.parametrize("name", ["umt5_xxl_encoder_hf.json", "umt5_xxl_encoder_wan_original.json"])
def test_real_umt5_xxl_layouts_on_meta(name, manifests_dir):
    shapes = to_umt5_keys(_manifest_shapes(manifests_dir, name))
    config = infer_umt5_config(shapes)
    assert {k: getattr(config, k) for k in UMT5_XXL} == UMT5_XXL
    model_shapes = {k: tuple(v.shape) for k, v in umt5_on_meta(config).state_dict().items()}
    assert model_shapes == shapes


def test_gemma_file_is_refused_by_name(tmp_path):
    path = str(tmp_path / "gemma_2_2b_fp16.safetensors")
    save_file({"model.layers.0.pre_feedforward_layernorm.weight": torch.zeros(4)}, path)
    with pytest.raises(ValueError, match="Gemma-2"):
        load_umt5_encoder(path)


def test_wan_transformer_is_refused_by_name(tmp_path):
    path = str(tmp_path / "wan2.1_t2v_1.3B_fp16.safetensors")
    save_file({"head.modulation": torch.zeros(1, 2, 4), "blocks.0.self_attn.q.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(ValueError, match="Wan transformer"):
        load_umt5_encoder(path)


def test_t5_with_shared_bias_is_not_umt5(source_model, spm_bytes, tmp_path):
    state = comfy_state_dict(source_model)
    del state["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"]
    save_file(state, str(tmp_path / "t5xxl_fp16.safetensors"))
    (tmp_path / "spiece.model").write_bytes(spm_bytes)
    with pytest.raises(ValueError, match="detected as: T5 text encoder"):
        load_umt5_encoder(str(tmp_path / "t5xxl_fp16.safetensors"))


def test_missing_and_unexpected_keys_are_named(layouts, tmp_path):
    state = load_file(layouts["comfy_single"])
    del state["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
    state["encoder.block.0.layer.0.SelfAttention.extra.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "umt5.safetensors"))
    named = (r"missing \['encoder\.block\.1\.layer\.1\.DenseReluDense\.wi_1\.weight'\].*"
             r"unexpected \['encoder\.block\.0\.layer\.0\.SelfAttention\.extra\.weight'\]")
    with pytest.raises(ValueError, match=named):
        load_umt5_encoder(str(tmp_path / "umt5.safetensors"))


def test_wan_pth_without_tokenizer_says_where_to_put_it(layouts, tmp_path):
    path = shutil.copy(layouts["wan_original_pth"], tmp_path)
    with pytest.raises(ValueError, match=r"spiece\.model.*" + str(tmp_path).replace("\\", "\\\\") + r".*google"):
        load_umt5_encoder(path)


def test_truncated_file_is_a_clear_error(layouts, tmp_path):
    data = open(layouts["comfy_single"], "rb").read()
    path = tmp_path / "umt5_xxl_fp16.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_umt5_encoder(str(path))


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither"):
        load_umt5_encoder(str(tmp_path / "nothing_here"))
