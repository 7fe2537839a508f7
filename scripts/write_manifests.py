"""Writes tests/manifests/: the tensor layout (key -> [shape, dtype]) of each real released checkpoint the loaders
read, and a README table of them. Nothing is downloaded: every model is built on the meta device.

    python scripts/write_manifests.py          # rewrite tests/manifests/
    python scripts/write_manifests.py --check  # exit 1 where tests/manifests/ differs from what this writes

Library layouts come from the diffusers / transformers class with the real config. Each config below holds the
fields of the cited config.json that decide tensor shapes (the rest, e.g. eps or latent statistics, leave shapes
alone). Original layouts (NVlabs Sana, the original Wan2.1 WanModel / T5 / VAE and Wan2.2 VAE names) come from
the library layout through the diffusers -> original key maps of tests/tiny_*.py: they invert diffusers' conversion scripts and are
written independently of the loaders' maps, so the loader tests on these files stay a check of the loaders.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Callable, NamedTuple

import torch
from diffusers import (AutoencoderDC, AutoencoderKLWan, SanaControlNetModel, SanaTransformer2DModel,
                       SanaVideoTransformer3DModel, WanTransformer3DModel)
from transformers import (CLIPVisionConfig, CLIPVisionModelWithProjection, Gemma2Config, Gemma2ForCausalLM,
                          UMT5Config, UMT5EncoderModel)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from conftest import MANIFESTS  # noqa: E402  (conftest also imports the pack as `sana_wan`, which tiny_umt5 needs)
import tiny_clip_vision  # noqa: E402
import tiny_sana  # noqa: E402
import tiny_sana_video  # noqa: E402
import tiny_umt5  # noqa: E402
import tiny_wan  # noqa: E402
import tiny_wan_camera  # noqa: E402
import tiny_wan_vae  # noqa: E402
from tiny_dcae import SANA_DCAE_CONFIG  # noqa: E402  (mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers config.json)

# Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers transformer/config.json (Sana_1600M_1024px_diffusers: same)
SANA_1600M = {
    "in_channels": 32, "out_channels": 32, "num_attention_heads": 70, "attention_head_dim": 32, "num_layers": 20,
    "num_cross_attention_heads": 20, "cross_attention_head_dim": 112, "cross_attention_dim": 2240,
    "caption_channels": 2304, "mlp_ratio": 2.5, "attention_bias": False, "norm_elementwise_affine": False,
    "sample_size": 32, "patch_size": 1, "interpolation_scale": None,
}
# Efficient-Large-Model/Sana_600M_1024px_diffusers transformer/config.json
SANA_600M = {**SANA_1600M, "num_attention_heads": 36, "num_layers": 28, "num_cross_attention_heads": 16,
             "cross_attention_head_dim": 72, "cross_attention_dim": 1152}
# Efficient-Large-Model/Sana_1600M_4Kpx_BF16_diffusers transformer/config.json
SANA_1600M_4K = {**SANA_1600M, "sample_size": 128, "interpolation_scale": 2.0}
# Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers transformer/config.json
SANA15_1600M = {**SANA_1600M, "qk_norm": "rms_norm_across_heads"}
# Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers transformer/config.json
SANA_SPRINT_1600M = {**SANA15_1600M, "guidance_embeds": True}
# diffusers scripts/convert_sana_controlnet_to_diffusers.py, model_kwargs["SanaMS_1600M_P1_ControlNet_D7"] at
# --image_size 1024: what it writes from Efficient-Large-Model/Sana_1600M_1024px_BF16_ControlNet_HED
SANA_CONTROLNET_1600M = {**SANA_1600M, "num_layers": 7}
# The transformer_kwargs of diffusers' scripts/convert_sana_video_to_diffusers.py at --video_size 480, what wrote
# Efficient-Large-Model/SANA-Video_2B_480p_diffusers (its transformer/config.json was not reachable to cite).
SANA_VIDEO_2B_480P = {
    "in_channels": 16, "out_channels": 16, "num_attention_heads": 20, "attention_head_dim": 112, "num_layers": 20,
    "num_cross_attention_heads": 20, "cross_attention_head_dim": 112, "cross_attention_dim": 2240,
    "caption_channels": 2304, "mlp_ratio": 3.0, "attention_bias": False, "sample_size": 30, "patch_size": (1, 2, 2),
    "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
}
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json
WAN21_T2V_1_3B = {
    "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "image_dim": None, "added_kv_proj_dim": None,
}
# Wan-AI/Wan2.1-I2V-14B-480P-Diffusers transformer/config.json (-720P-Diffusers: the same shapes)
WAN21_I2V_14B = {**WAN21_T2V_1_3B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40, "in_channels": 36,
                 "image_dim": 1280, "added_kv_proj_dim": 5120}
# Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers transformer/config.json
WAN21_FLF2V_14B = {**WAN21_I2V_14B, "pos_embed_seq_len": 514}
# alibaba-pai/Wan2.1-Fun-V1.1-1.3B-Control-Camera: the 1.3B with CLIP cross-attention, 32 input channels (noise + start
# image latent) and a 24-channel camera adapter (DiffSynth-Studio's "PAI control-camera v1.1" config; ComfyUI's
# model_detection: control_adapter.conv.weight with img_emb -> CameraWanModel)
WAN21_FUN_CAMERA_1_3B = {**WAN21_T2V_1_3B, "in_channels": 32, "image_dim": 1280, "added_kv_proj_dim": 1536}
# Wan-AI/Wan2.2-TI2V-5B-Diffusers transformer/config.json (wan/configs/wan_ti2v_5B.py: dim 3072, 24 heads, 30 layers)
WAN22_TI2V_5B = {**WAN21_T2V_1_3B, "num_attention_heads": 24, "in_channels": 48, "out_channels": 48, "ffn_dim": 14336}
# Wan-AI/Wan2.2-I2V-A14B-Diffusers transformer/config.json and transformer_2/config.json (each expert; the T2V-A14B
# experts have the Wan2.1 T2V 14B shape)
WAN22_I2V_A14B = {**WAN21_T2V_1_3B, "num_attention_heads": 40, "num_layers": 40, "ffn_dim": 13824, "in_channels": 36}
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers vae/config.json
WAN21_VAE = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
             "temperal_downsample": [False, True, True]}
# Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json (diffusers' scripts/convert_wan_to_diffusers.py vae22_diffusers_config)
WAN22_VAE = {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "is_residual": True, "in_channels": 12,
             "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16}
# google/umt5-xxl config.json (Wan-AI/Wan2.1-T2V-1.3B-Diffusers text_encoder/config.json: same sizes)
UMT5_XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
            "relative_attention_num_buckets": 32, "feed_forward_proj": "gated-gelu"}
# google/gemma-2-2b-it config.json
GEMMA2_2B = {"vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
             "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256}


def _meta(cls, *args, **kwargs):
    with torch.device("meta"):
        return cls(*args, **kwargs)


def _gemma() -> dict:
    state_dict = _meta(Gemma2ForCausalLM, Gemma2Config(**GEMMA2_2B)).state_dict()
    del state_dict["lm_head.weight"]  # tied to model.embed_tokens; the released files do not store it
    return state_dict


def _umt5() -> dict:
    return _meta(UMT5EncoderModel, UMT5Config(**UMT5_XXL)).state_dict()


def _clip_vision_h() -> dict:
    """CLIPVisionModelWithProjection's keys (transformers 4 and 5 alike: `vision_model.*`, `visual_projection`)."""
    model = _meta(CLIPVisionModelWithProjection, CLIPVisionConfig(**tiny_clip_vision.VIT_H))
    return {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def _wan(config: dict) -> dict:
    return _meta(WanTransformer3DModel, **config).state_dict()


def _wan_vae() -> dict:
    return _meta(AutoencoderKLWan, **WAN21_VAE).state_dict()


def _wan_fun_camera() -> dict:
    state_dict = tiny_wan.diffusers_to_original(_meta(WanTransformer3DModel, **WAN21_FUN_CAMERA_1_3B).state_dict())
    width = WAN21_FUN_CAMERA_1_3B["num_attention_heads"] * WAN21_FUN_CAMERA_1_3B["attention_head_dim"]
    shapes = tiny_wan_camera.camera_adapter_shapes(width)
    return {**state_dict, **{k: torch.empty(v, device="meta") for k, v in shapes.items()}}


def _wan22_vae() -> dict:
    return _meta(AutoencoderKLWan, **WAN22_VAE).state_dict()


class Layout(NamedTuple):
    build: Callable[[], dict]  # key -> tensor (meta or small)
    dtype: str  # of the usually distributed file
    source: str
    format_notes: str  # which released files use the layout, and their quirks


_SANA_DIFFUSERS = "diffusers SanaTransformer2DModel, {} transformer/config.json, meta device"
_SANA_ORIGINAL = ("Sana original layout: " + _SANA_DIFFUSERS + ", through tests/tiny_sana.py diffusers_to_original "
                  "(fused qkv / kv_linear, NVlabs names, plus the pos_embed and null-caption y_embedder.y_embedding "
                  "that release files carry{})")
_SANA_PTH = " .pth files hold these keys under 'state_dict' (load with weights_only=True)."
_SPRINT_LOGVAR = (", and Sprint's logvar_linear: its training config sets logvar: true (NVlabs/Sana configs/"
                  "sana_sprint_config/1024ms/SanaSprint_1600M_1024px_allqknorm_bf16_scm_ladd.yaml) and "
                  "diffusers' scripts/convert_sana_to_diffusers.py drops it")


def _sana_diffusers(config: dict, repo: str, dtype: str, files: str) -> Layout:
    return Layout(lambda: _meta(SanaTransformer2DModel, **config).state_dict(), dtype, _SANA_DIFFUSERS.format(repo),
                  files)


def _sana_original(config: dict, repo: str, dtype: str, pth: str, extras: str = "") -> Layout:
    def build():
        model = _meta(SanaTransformer2DModel, **config)
        return tiny_sana.diffusers_to_original(model.state_dict(), model.config)

    return Layout(build, dtype, _SANA_ORIGINAL.format(repo, extras), pth + _SANA_PTH)


_SANA_VIDEO_SOURCE = ("diffusers SanaVideoTransformer3DModel, the transformer_kwargs of diffusers' "
                      "scripts/convert_sana_video_to_diffusers.py at --video_size 480 (the config it writes for "
                      "Efficient-Large-Model/SANA-Video_2B_480p_diffusers, whose config.json was not reachable), meta "
                      "device")


def _sana_video_original():
    model = _meta(SanaVideoTransformer3DModel, **SANA_VIDEO_2B_480P)
    return tiny_sana_video.diffusers_to_original(model.state_dict(), model.config)


LAYOUTS = {
    "clip_vision_h": Layout(
        _clip_vision_h, "F16",
        "transformers CLIPVisionModelWithProjection, laion/CLIP-ViT-H-14-laion2B-s32B-b79K vision_config (= "
        "ComfyUI's comfy/clip_vision_config_h.json: 1280 wide, 32 layers, 16 heads, MLP 5120, 224 px, patch 14, "
        "projection 1024), meta device",
        "Comfy-Org/Wan_2.1_ComfyUI_repackaged split_files/clip_vision/clip_vision_h.safetensors, F16: Wan2.1 "
        "image-to-video's CLIP image encoder."),
    "clip_vision_h_diffusers_image_encoder": Layout(
        lambda: {k: v for k, v in _clip_vision_h().items() if not k.startswith("visual_projection")}, "F32",
        "clip_vision_h without the projection: transformers CLIPVisionModel as transformers 4 saved it (keys under "
        "'vision_model.'), Wan-AI/Wan2.1-I2V-14B-480P-Diffusers image_encoder/config.json, meta device",
        "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers, -720P-Diffusers and Wan2.1-FLF2V-14B-720P-diffusers "
        "image_encoder/model.safetensors, F32 (beside image_processor/preprocessor_config.json)."),
    "clip_vision_h_wan_original": Layout(
        lambda: tiny_clip_vision.to_wan_original(_clip_vision_h()), "F16",
        "original Wan2.1 CLIP (wan/modules/clip.py VisionTransformer under 'visual.': fused to_qkv, batched "
        "cls_embedding / pos_embedding, head = projection transposed): clip_vision_h through "
        "tests/tiny_clip_vision.py to_wan_original",
        "Wan-AI/Wan2.1-I2V-14B-480P (and -720P, FLF2V-14B-720P) models_clip_open-clip-xlm-roberta-large-vit-huge-14"
        ".pth, F16: these 'visual.' keys plus the XLM-RoBERTa text tower ('textual.*') and 'log_scale', which Wan "
        "never runs and the loader drops."),
    "dcae_f32c32_diffusers": Layout(
        lambda: _meta(AutoencoderDC, **SANA_DCAE_CONFIG).state_dict(), "F32",
        "diffusers AutoencoderDC, mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers config.json (tests/tiny_dcae.py "
        "SANA_DCAE_CONFIG), meta device",
        "mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers and -1.0-diffusers diffusion_pytorch_model.safetensors (F32); "
        "the vae/ folder of the Sana diffusers pipelines. Sana's scaling_factor is 0.41407."),
    "gemma2_2b_it": Layout(
        _gemma, "BF16",
        "transformers Gemma2ForCausalLM, google/gemma-2-2b-it config.json, meta device; lm_head omitted (tied to "
        "model.embed_tokens)",
        "google/gemma-2-2b-it (and its copy Efficient-Large-Model/gemma-2-2b-it) model-0000N-of-00002.safetensors, "
        "BF16 (Sana's text encoder; Sana uses the 'model.' decoder only). Comfy-Org gemma_2_2b_fp16.safetensors "
        "(Lumina 2) may carry a 'spiece_model' tokenizer tensor and differ in prefix."),
    "sana15_1600m_diffusers": _sana_diffusers(
        SANA15_1600M, "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers", "BF16",
        "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers transformer/diffusion_pytorch_model*.safetensors, "
        "BF16."),
    "sana15_1600m_original": _sana_original(
        SANA15_1600M, "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers", "BF16",
        "Efficient-Large-Model/SANA1.5_1.6B_1024px/checkpoints/SANA1.5_1.6B_1024px.pth, BF16."),
    "sana_1600m_1024px_diffusers": _sana_diffusers(
        SANA_1600M, "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers", "BF16",
        "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers transformer/diffusion_pytorch_model.bf16"
        ".safetensors; Sana_1600M_1024px_diffusers (fp16 / fp32 variants): same keys."),
    "sana_1600m_1024px_original": _sana_original(
        SANA_1600M, "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers", "F16",
        "Efficient-Large-Model/Sana_1600M_1024px/checkpoints/Sana_1600M_1024px.pth, F16; Sana_1600M_1024px_BF16: "
        "same keys in BF16."),
    "sana_1600m_4k_original": _sana_original(
        SANA_1600M_4K, "Efficient-Large-Model/Sana_1600M_4Kpx_BF16_diffusers", "BF16",
        "Efficient-Large-Model/Sana_1600M_4Kpx_BF16/checkpoints/Sana_1600M_4Kpx_BF16.pth, BF16; its pos_embed "
        "covers the 128x128 training grid."),
    "sana_600m_diffusers": _sana_diffusers(
        SANA_600M, "Efficient-Large-Model/Sana_600M_1024px_diffusers", "F16",
        "Efficient-Large-Model/Sana_600M_1024px_diffusers transformer/diffusion_pytorch_model.fp16.safetensors "
        "(and the fp32 file)."),
    "sana_600m_original": _sana_original(
        SANA_600M, "Efficient-Large-Model/Sana_600M_1024px_diffusers", "F16",
        "Efficient-Large-Model/Sana_600M_1024px/checkpoints/Sana_600M_1024px_MultiLing.pth, F16."),
    "sana_controlnet_1600m_diffusers": Layout(
        lambda: _meta(SanaControlNetModel, **SANA_CONTROLNET_1600M).state_dict(), "BF16",
        "diffusers SanaControlNetModel, the SanaMS_1600M_P1_ControlNet_D7 config of diffusers' "
        "scripts/convert_sana_controlnet_to_diffusers.py at 1024 px, meta device",
        "What that script writes from Efficient-Large-Model/Sana_1600M_1024px_BF16_ControlNet_HED/checkpoints/"
        "Sana_1600M_1024px_BF16_ControlNet_HED.pth (BF16); no official diffusers repository of the 1.6B "
        "ControlNet exists. The original .pth is the whole SanaMSControlNet: sana_1600m_1024px_original's keys "
        "plus controlnet.* (tests/tiny_sana_controlnet.py)."),
    "sana_sprint_1600m_diffusers": _sana_diffusers(
        SANA_SPRINT_1600M, "Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers", "BF16",
        "Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers transformer/diffusion_pytorch_model*.safetensors, "
        "BF16."),
    "sana_sprint_1600m_original": _sana_original(
        SANA_SPRINT_1600M, "Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers", "BF16",
        "Efficient-Large-Model/Sana_Sprint_1.6B_1024px/checkpoints/Sana_Sprint_1.6B_1024px.pth, BF16.",
        _SPRINT_LOGVAR),
    "sana_video_2b_480p_diffusers": Layout(
        lambda: _meta(SanaVideoTransformer3DModel, **SANA_VIDEO_2B_480P).state_dict(), "BF16", _SANA_VIDEO_SOURCE,
        "Efficient-Large-Model/SANA-Video_2B_480p_diffusers transformer/diffusion_pytorch_model*.safetensors (dtype "
        "not verified). Its pipeline pairs it with Gemma-2-2B-IT and the Wan2.1 VAE (AutoencoderKLWan)."),
    "sana_video_2b_480p_original": Layout(
        _sana_video_original, "BF16",
        "NVlabs Sana-Video layout: " + _SANA_VIDEO_SOURCE + ", through tests/tiny_sana_video.py diffusers_to_original "
        "(the Sana names, fused qkv / kv_linear, x_embedder.proj as a Conv3d and mlp.t_conv, plus the null-caption "
        "y_embedder.y_embedding that the script drops)",
        "Efficient-Large-Model/SANA-Video_2B_480p/checkpoints/SANA_Video_2B_480p.pth (dtype not verified)." + _SANA_PTH),
    "umt5_xxl_encoder_hf": Layout(
        _umt5, "F16",
        "transformers UMT5EncoderModel, google/umt5-xxl config.json, meta device",
        "Comfy-Org/Wan_2.1_ComfyUI_repackaged umt5_xxl_fp16.safetensors (F16) and "
        "umt5_xxl_fp8_e4m3fn_scaled.safetensors (weights F8_E4M3 plus a 'scaled_fp8' marker tensor and "
        "'<layer>.scale_weight' F32 scalars for each quantized Linear); Comfy-Org files may also carry the "
        "tokenizer as a uint8 'spiece_model' tensor and store the tied embedding once, as 'shared.weight' (this "
        "layout lists it under 'encoder.embed_tokens.weight' too). Wan2.1 -Diffusers text_encoder/ folders."),
    "umt5_xxl_encoder_wan_original": Layout(
        lambda: tiny_umt5.to_wan_original(_umt5()), "BF16",
        "original Wan2.1 T5Encoder (wan/modules/t5.py) names: umt5_xxl_encoder_hf through tests/tiny_umt5.py "
        "to_wan_original",
        "Wan-AI/Wan2.1-T2V-1.3B (and the other Wan2.1 releases) models_t5_umt5-xxl-enc-bf16.pth: a plain state "
        "dict (load with weights_only=True), BF16."),
    "wan21_flf2v_14b_diffusers": Layout(
        lambda: _wan(WAN21_FLF2V_14B), "F32",
        "diffusers WanTransformer3DModel, Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers transformer/config.json, meta device",
        "Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers transformer/diffusion_pytorch_model-0000N-of-0000M.safetensors, F32. "
        "I2V's tensors plus the image tokens' position embedding (2 x 257 CLIP tokens)."),
    "wan21_flf2v_14b_original": Layout(
        lambda: tiny_wan.diffusers_to_original(_wan(WAN21_FLF2V_14B)), "F16",
        "original Wan2.1 WanModel names: wan21_flf2v_14b_diffusers through tests/tiny_wan.py diffusers_to_original",
        "Wan-AI/Wan2.1-FLF2V-14B-720P diffusion_pytorch_model-0000N-of-00007.safetensors; Comfy-Org "
        "wan2.1_flf2v_720p_14B_fp16.safetensors (F16, also _fp8_e4m3fn): these keys. img_emb.emb_pos is the key "
        "diffusers' single-file converter leaves unmapped."),
    "wan21_i2v_14b_diffusers": Layout(
        lambda: _wan(WAN21_I2V_14B), "F32",
        "diffusers WanTransformer3DModel, Wan-AI/Wan2.1-I2V-14B-480P-Diffusers transformer/config.json, meta device",
        "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers and -720P-Diffusers transformer/diffusion_pytorch_model-0000N-of-"
        "0000M.safetensors, F32 (the two differ in training resolution, not in shapes)."),
    "wan21_i2v_14b_original": Layout(
        lambda: tiny_wan.diffusers_to_original(_wan(WAN21_I2V_14B)), "F16",
        "original Wan2.1 WanModel names: wan21_i2v_14b_diffusers through tests/tiny_wan.py diffusers_to_original",
        "Wan-AI/Wan2.1-I2V-14B-480P / -720P diffusion_pytorch_model-0000N-of-00007.safetensors; Comfy-Org "
        "wan2.1_i2v_480p_14B_fp16 / wan2.1_i2v_720p_14B_fp16.safetensors (F16; _bf16, _fp8_e4m3fn and "
        "_fp8_scaled variants: same keys, fp8 ones with ComfyUI's scale tensors)."),
    "wan21_t2v_1_3b_diffusers": Layout(
        lambda: _meta(WanTransformer3DModel, **WAN21_T2V_1_3B).state_dict(), "F32",
        "diffusers WanTransformer3DModel, Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json, meta device",
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/diffusion_pytorch_model*.safetensors, F32. Note diffusers' "
        "norm2/norm3 are the original norm3/norm2."),
    "wan21_t2v_1_3b_original": Layout(
        lambda: tiny_wan.diffusers_to_original(_meta(WanTransformer3DModel, **WAN21_T2V_1_3B).state_dict()), "F16",
        "original Wan2.1 WanModel names (ComfyUI's WanModel uses the same): wan21_t2v_1_3b_diffusers through "
        "tests/tiny_wan.py diffusers_to_original",
        "Wan-AI/Wan2.1-T2V-1.3B diffusion_pytorch_model.safetensors: these keys, F32. Comfy-Org "
        "wan2.1_t2v_1.3B_fp16 / _bf16: these keys, F16 / BF16; some repackaged files prefix every key with "
        "'model.diffusion_model.'."),
    "wan21_fun_camera_1_3b_original": Layout(
        _wan_fun_camera, "BF16",
        "original Wan2.1 WanModel names of the 1.3B I2V-style model (in_channels 32, CLIP cross-attention) through "
        "tests/tiny_wan.py diffusers_to_original, plus the control adapter of tests/tiny_wan_camera.py "
        "camera_adapter_shapes (VideoX-Fun's SimpleAdapter names, ComfyUI's WanCamAdapter)",
        "alibaba-pai/Wan2.1-Fun-V1.1-1.3B-Control-Camera diffusion_pytorch_model.safetensors (VideoX-Fun: original "
        "Wan names); Comfy-Org's repackaged Fun-Camera files: the same keys (some prefixed 'model.diffusion_model.'). "
        "The 14B (Wan2.1-Fun-V1.1-14B-Control-Camera) is the same layout at dim 5120, 40 layers."),
    "wan22_i2v_a14b_original": Layout(
        lambda: tiny_wan.diffusers_to_original(_meta(WanTransformer3DModel, **WAN22_I2V_A14B).state_dict()), "F16",
        "original Wan2.2 WanModel names (ComfyUI's WanModel uses the same): diffusers WanTransformer3DModel, "
        "Wan-AI/Wan2.2-I2V-A14B-Diffusers transformer/config.json, meta device, through tests/tiny_wan.py "
        "diffusers_to_original",
        "Each expert of Wan-AI/Wan2.2-I2V-A14B (high_noise_model/, low_noise_model/ "
        "diffusion_pytorch_model-0000N-of-00006.safetensors, BF16); Comfy-Org wan2.2_i2v_high_noise_14B_fp16 / "
        "_low_noise_ (F16) and _fp8_scaled (F8_E4M3 weights with '<layer>.scale_weight' and a 'scaled_fp8' marker)."),
    "wan22_ti2v_5b_diffusers": Layout(
        lambda: _meta(WanTransformer3DModel, **WAN22_TI2V_5B).state_dict(), "BF16",
        "diffusers WanTransformer3DModel, Wan-AI/Wan2.2-TI2V-5B-Diffusers transformer/config.json, meta device",
        "Wan-AI/Wan2.2-TI2V-5B-Diffusers transformer/diffusion_pytorch_model-0000N-of-00003.safetensors."),
    "wan22_ti2v_5b_original": Layout(
        lambda: tiny_wan.diffusers_to_original(_meta(WanTransformer3DModel, **WAN22_TI2V_5B).state_dict()), "F16",
        "original Wan2.2 WanModel names: wan22_ti2v_5b_diffusers through tests/tiny_wan.py diffusers_to_original",
        "Wan-AI/Wan2.2-TI2V-5B diffusion_pytorch_model-0000N-of-00003.safetensors (BF16); Comfy-Org "
        "wan2.2_ti2v_5B_fp16.safetensors (F16)."),
    "wan21_vae_diffusers": Layout(
        _wan_vae, "F32",
        "diffusers AutoencoderKLWan, Wan-AI/Wan2.1-T2V-1.3B-Diffusers vae/config.json (= AutoencoderKLWan()), meta "
        "device",
        "Wan-AI/Wan2.1-*-Diffusers vae/diffusion_pytorch_model.safetensors, F32."),
    "wan21_vae_original": Layout(
        lambda: tiny_wan_vae.to_original_layout(_wan_vae(), WAN21_VAE["num_res_blocks"]), "F16",
        "original Wan2.1 WanVAE names (wan/modules/vae.py; ComfyUI's WanVAE uses the same): wan21_vae_diffusers "
        "through tests/tiny_wan_vae.py to_original_layout, the inverse of diffusers' convert_wan_vae_to_diffusers; "
        "temperal_downsample [False, True, True], so time_conv sits in encoder.downsamples.5/8 and "
        "decoder.upsamples.3/7",
        "Wan-AI/Wan2.1-T2V-1.3B Wan2.1_VAE.pth: a plain state dict (load with weights_only=True), F32; "
        "Comfy-Org wan_2.1_vae.safetensors: F16."),
    "wan22_vae_diffusers": Layout(
        _wan22_vae, "F32",
        "diffusers AutoencoderKLWan, Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json (diffusers' "
        "scripts/convert_wan_to_diffusers.py vae22_diffusers_config), meta device",
        "Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/diffusion_pytorch_model.safetensors, F32 (the Wan2.2 A14B "
        "-Diffusers folders carry the Wan2.1 VAE)."),
    "wan22_vae_original": Layout(
        lambda: tiny_wan_vae.to_wan22_original_layout(_wan22_vae()), "F16",
        "original Wan2.2 VAE names (Wan2.2 wan/modules/vae2_2.py; ComfyUI's comfy/ldm/wan/vae2_2.py WanVAE has the "
        "same module tree, checked key for key at toy widths): wan22_vae_diffusers through tests/tiny_wan_vae.py "
        "to_wan22_original_layout, the inverse of diffusers' convert_vae_22",
        "Wan-AI/Wan2.2-TI2V-5B Wan2.2_VAE.pth: a plain state dict (load with weights_only=True), F32; Comfy-Org "
        "wan2.2_vae.safetensors (Wan_2.2_ComfyUI_Repackaged split_files/vae): F16."),
}

README = """# Real checkpoint layouts

Written by `scripts/write_manifests.py`; do not edit by hand. `python scripts/write_manifests.py` rewrites this folder,
`--check` exits 1 where it differs from what the script writes (a unit test runs the check). Nothing is downloaded:
every model is built on the meta device from the real config, cited in the script.

Each JSON file lists the tensors of one real on-disk layout: `tensors` maps a key to `[shape, dtype in the usual
distributed file]`; `parameters` counts their elements (tied or duplicated tensors a layout stores count each time,
e.g. the Hugging Face UMT5 layout's `shared.weight` and `encoder.embed_tokens.weight`); `source` says how it was
derived; `format_notes` which released files use it and their quirks. A loader is complete for a layout when every
key maps onto its model with equal shape and no model tensor is left unfilled; the tests check that on the meta
device.

Original layouts (NVlabs Sana, the original Wan2.1 WanModel / T5 / VAE and Wan2.2 VAE names, whose code is not
vendored here) are the library layout through the tests' own diffusers -> original key maps (`tests/tiny_*.py`). Every file has the keys,
shapes and dtypes of the one first derived from the reference code (the manifests given beside the repository),
except:

- `dcae_f32c32_diffusers.json`: that one was `AutoencoderDC()`'s default config (no attention stages, pixel
  (un)shuffle resampling, 195 tensors), not Sana's DC-AE;
- `wan21_vae_original.json`: that one was built with ComfyUI WanVAE's default `temperal_downsample`
  [True, True, False]; Wan2.1 uses [False, True, True], so `time_conv` sits in `encoder.downsamples.5/8` and
  `decoder.upsamples.3/7`, not 2/5 and 7/11;
- `sana_sprint_1600m_original.json`: adds `logvar_linear.weight/bias`, the training head that Sana-Sprint's training
  config builds (`logvar: true`) and diffusers' conversion script drops; the reference code used for the first one
  built the model without it.

| file | tensors | parameters | derived from | released files with this layout |
|---|---|---|---|---|
"""


def manifest(layout: Layout) -> dict:
    shapes = {k: list(v.shape) for k, v in layout.build().items()}
    return {
        "format_notes": layout.format_notes,
        "parameters": sum(math.prod(s) for s in shapes.values()),
        "source": layout.source,
        "tensors": {k: [s, layout.dtype] for k, s in shapes.items()},
    }


def render() -> dict[str, str]:
    """File name -> content of every file in tests/manifests/."""
    files, rows = {}, []
    for name, layout in LAYOUTS.items():
        data = manifest(layout)
        files[name + ".json"] = json.dumps(data, indent=0, sort_keys=True)
        rows.append(f"| `{name}.json` | {len(data['tensors'])} | {data['parameters'] / 1e9:.3f} B | {layout.source} "
                    f"| {layout.format_notes} |")
    files["README.md"] = README + "\n".join(rows) + "\n"
    return files


def _current(name: str) -> str | None:
    path = os.path.join(MANIFESTS, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read()


def stale(files: dict[str, str]) -> list[str]:
    """The names in tests/manifests/ that are missing, differ from `files`, or are not written by this script."""
    present = os.listdir(MANIFESTS) if os.path.isdir(MANIFESTS) else []
    return sorted(name for name in {*present, *files} if _current(name) != files.get(name))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with tests/manifests/ instead of writing")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        differing = stale(files)
        for name in differing:
            print(f"tests/manifests/{name} differs from what scripts/write_manifests.py writes")
        return 1 if differing else 0
    os.makedirs(MANIFESTS, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(MANIFESTS, name), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
