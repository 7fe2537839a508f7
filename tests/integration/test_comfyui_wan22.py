"""Wan2.2 in a real ComfyUI: the Wan2.2 VAE (48 channels): the pack's encode equals native VAE Encode on the same
file and latents pass between the pack's decoder and native VAE Decode both ways; two A14B experts in one Wan Sampler
equal the usual native graph, UNETLoader x2 -> ModelSamplingSD3 -> KSamplerAdvanced x2 (euler, simple)."""

import os

import pytest
import torch
from conftest import INPUT_SIZE, NATIVE_RELATIVE, assert_native_close
from safetensors.torch import save_file
from sample_media import INPUT_VIDEO
from test_comfyui_wan import _frames, _latent
from tiny_models import WAN_FILES
from tiny_wan import diffusers_to_original, tiny_wan_transformer

REAL_SIZE_WAN22_VAE = "wan2.2_vae_random_real_size.safetensors"


@pytest.fixture(scope="module")
def wan22_vae(comfy_models_dir):
    """Written once per session, only for this module (1.4 GB): the other tests do not need it."""
    from tiny_models import real_size_wan_vae_file

    path = os.path.join(comfy_models_dir, "vae", REAL_SIZE_WAN22_VAE)
    if not os.path.exists(path):
        real_size_wan_vae_file(path, wan22=True)
    return REAL_SIZE_WAN22_VAE


def _graph(vae_name: str) -> dict:
    return {
        "video": {"class_type": "LoadVideo", "inputs": {"file": INPUT_VIDEO}},
        "parts": {"class_type": "GetVideoComponents", "inputs": {"video": ["video", 0]}},
        "vae_ours": {"class_type": "WanVAELoader", "inputs": {"vae_name": vae_name, "dtype": "fp32"}},
        "vae_native": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}},
        "enc_ours": {"class_type": "WanVAEEncode", "inputs": {"vae": ["vae_ours", 0], "frames": ["parts", 0]}},
        "enc_native": {"class_type": "VAEEncode", "inputs": {"vae": ["vae_native", 0], "pixels": ["parts", 0]}},
        "save_ours": {"class_type": "SaveLatent", "inputs": {"samples": ["enc_ours", 0], "filename_prefix": "w22/ours"}},
        "save_native": {"class_type": "SaveLatent", "inputs": {"samples": ["enc_native", 0],
                                                               "filename_prefix": "w22/native"}},
        "dec_ours": {"class_type": "WanVAEDecode", "inputs": {
            "vae": ["vae_ours", 0], "samples": ["enc_native", 0], "tiling": "off", "tile_size": 1024,
            "tile_overlap": 64}},
        "dec_native": {"class_type": "VAEDecode", "inputs": {"vae": ["vae_native", 0], "samples": ["enc_ours", 0]}},
        "img_ours": {"class_type": "SaveImage", "inputs": {"images": ["dec_ours", 0], "filename_prefix": "w22/ours"}},
        "img_native": {"class_type": "SaveImage", "inputs": {"images": ["dec_native", 0],
                                                            "filename_prefix": "w22/native"}},
    }


def test_wan22_latents_cross_the_native_vae_both_ways(comfy_server, wan22_vae):
    width, height, frames = INPUT_SIZE
    entry = comfy_server.run_prompt(_graph(wan22_vae), timeout=900)
    ours, native = _latent(comfy_server, entry, "save_ours"), _latent(comfy_server, entry, "save_native")
    assert ours.shape == native.shape == (1, 48, (frames - 1) // 4 + 1, height // 16, width // 16)
    delta, largest = (ours - native).abs().max().item(), native.abs().max().item()
    print(f"Wan2.2 VAE encode, ours vs native: max|Δ| {delta:.3g} of the largest value {largest:.3g}")
    # Both encode in float32: measured 3.3e-7 to 1.0e-6 of the largest value (0.3.64, 0.33.0; random weights per run).
    assert delta <= 2e-6 * largest
    ours_decoder, native_decoder = _frames(comfy_server, entry, "img_ours"), _frames(comfy_server, entry, "img_native")
    assert ours_decoder.shape == native_decoder.shape and ours_decoder.shape[0] == frames
    assert (ours_decoder - native_decoder).abs().max() <= 2, "8-bit frames differ by more than rounding"
    assert ours_decoder.std() > 1, "flat frames would make the comparison meaningless"
    assert torch.isfinite(ours).all()


EXPERT_FILES = ("wan2.2_t2v_high_noise_tiny.safetensors", "wan2.2_t2v_low_noise_tiny.safetensors")
STEPS, SWITCH, SHIFT, CFG, CFG_2, SEED = 6, 3, 12.0, 4.0, 3.0, 5


@pytest.fixture(scope="module")
def experts(comfy_models_dir):
    """Two tiny T2V experts (the Wan2.1 T2V shape, as the A14B ones) in the Comfy-Org layout."""
    for seed, name in enumerate(EXPERT_FILES):
        model = tiny_wan_transformer(seed=40 + seed)
        original = diffusers_to_original({k: v.contiguous() for k, v in model.state_dict().items()})
        save_file({"model.diffusion_model." + k: v for k, v in original.items()},
                  os.path.join(comfy_models_dir, "diffusion_models", name))
    return EXPERT_FILES


def _simple_sigma(step: int) -> float:
    """ComfyUI's simple scheduler on ModelSamplingSD3(shift): sigma of step `step` of STEPS."""
    s = (1000 - int(step * 1000 / STEPS)) / 1000
    return SHIFT * s / (1 + (SHIFT - 1) * s)


def _experts_graph(files) -> dict:
    boundary = (_simple_sigma(SWITCH - 1) + _simple_sigma(SWITCH)) / 2  # the native graph switches after SWITCH steps
    latent = {"width": 48, "height": 32, "length": 5, "batch_size": 1}
    common = {"positive": ["enc", 0], "negative": ["enc", 1], "noise_seed": SEED, "steps": STEPS,
              "sampler_name": "euler", "scheduler": "simple"}
    return {
        "te": {"class_type": "WanTextEncoderLoader", "inputs": {"model_name": WAN_FILES["text_encoder"], "dtype": "fp32"}},
        "enc": {"class_type": "WanTextEncode", "inputs": {"text_encoder": ["te", 0], "prompt": "a kite over dunes",
                                                          "negative_prompt": "blurry", "batch_prompts": False}},
        "empty": {"class_type": "EmptyWanLatentVideo", "inputs": latent},
        "high": {"class_type": "WanTransformerLoader", "inputs": {"model_name": files[0], "dtype": "fp32"}},
        "low": {"class_type": "WanTransformerLoader", "inputs": {"model_name": files[1], "dtype": "fp32"}},
        "ours": {"class_type": "WanSampler", "inputs": {
            "model": ["high", 0], "model_2": ["low", 0], "positive": ["enc", 0], "negative": ["enc", 1],
            "latent": ["empty", 0], "seed": SEED, "steps": STEPS, "cfg": CFG, "cfg_2": CFG_2, "shift": SHIFT,
            "boundary": boundary, "solver": "flow_euler", "schedule": "simple", "denoise": 1.0}},
        "native_high": {"class_type": "UNETLoader", "inputs": {"unet_name": files[0], "weight_dtype": "default"}},
        "native_low": {"class_type": "UNETLoader", "inputs": {"unet_name": files[1], "weight_dtype": "default"}},
        "shift_high": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["native_high", 0], "shift": SHIFT}},
        "shift_low": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["native_low", 0], "shift": SHIFT}},
        "first": {"class_type": "KSamplerAdvanced", "inputs": {
            **common, "model": ["shift_high", 0], "add_noise": "enable", "cfg": CFG, "latent_image": ["empty", 0],
            "start_at_step": 0, "end_at_step": SWITCH, "return_with_leftover_noise": "enable"}},
        "second": {"class_type": "KSamplerAdvanced", "inputs": {
            **common, "model": ["shift_low", 0], "add_noise": "disable", "cfg": CFG_2, "latent_image": ["first", 0],
            "start_at_step": SWITCH, "end_at_step": 10000, "return_with_leftover_noise": "disable"}},
        "save_ours": {"class_type": "SaveLatent", "inputs": {"samples": ["ours", 0], "filename_prefix": "a14b/ours"}},
        "save_native": {"class_type": "SaveLatent", "inputs": {"samples": ["second", 0],
                                                               "filename_prefix": "a14b/native"}},
    }


def test_two_experts_equal_native_ksampler_advanced_pair(comfy_server, experts):
    entry = comfy_server.run_prompt(_experts_graph(experts), timeout=600)
    ours, native = _latent(comfy_server, entry, "save_ours"), _latent(comfy_server, entry, "save_native")
    assert ours.shape == native.shape == (1, 16, 2, 4, 6)
    assert_native_close(ours, native, NATIVE_RELATIVE)


TI2V_FILE = "wan2.2_ti2v_tiny.safetensors"
TI2V_SIZE = (64, 32, 9)  # width, height, frames: 3 latent frames of 2 x 4 cells


@pytest.fixture(scope="module")
def ti2v(comfy_models_dir):
    """A tiny TI2V-5B-like transformer (48 channels) in the Comfy-Org layout."""
    model = tiny_wan_transformer("ti2v", seed=44)
    original = diffusers_to_original({k: v.contiguous() for k, v in model.state_dict().items()})
    save_file({"model.diffusion_model." + k: v for k, v in original.items()},
              os.path.join(comfy_models_dir, "diffusion_models", TI2V_FILE))
    return TI2V_FILE


def _ti2v_graph(vae_name: str, transformer: str) -> dict:
    width, height, frames = TI2V_SIZE
    sampling = {"positive": ["enc", 0], "negative": ["enc", 1], "seed": SEED, "steps": 4, "cfg": 5.0,
                "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}
    return {
        "video": {"class_type": "LoadVideo", "inputs": {"file": INPUT_VIDEO}},
        "parts": {"class_type": "GetVideoComponents", "inputs": {"video": ["video", 0]}},
        "first": {"class_type": "ImageFromBatch", "inputs": {"image": ["parts", 0], "batch_index": 0, "length": 1}},
        "te": {"class_type": "WanTextEncoderLoader", "inputs": {"model_name": WAN_FILES["text_encoder"], "dtype": "fp32"}},
        "enc": {"class_type": "WanTextEncode", "inputs": {"text_encoder": ["te", 0], "prompt": "a kite over dunes",
                                                          "negative_prompt": "blurry", "batch_prompts": False}},
        "vae_ours": {"class_type": "WanVAELoader", "inputs": {"vae_name": vae_name, "dtype": "fp32"}},
        "vae_native": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}},
        "latent_ours": {"class_type": "WanTI2VLatent", "inputs": {
            "vae": ["vae_ours", 0], "width": width, "height": height, "length": frames, "batch_size": 1,
            "start_image": ["first", 0]}},
        "latent_native": {"class_type": "Wan22ImageToVideoLatent", "inputs": {
            "vae": ["vae_native", 0], "width": width, "height": height, "length": frames, "batch_size": 1,
            "start_image": ["first", 0]}},
        "model_ours": {"class_type": "WanTransformerLoader", "inputs": {"model_name": transformer, "dtype": "fp32"}},
        "ours": {"class_type": "WanSampler", "inputs": {
            "model": ["model_ours", 0], "positive": ["enc", 0], "negative": ["enc", 1], "latent": ["latent_native", 0],
            "seed": SEED, "steps": 4, "cfg": 5.0, "shift": 5.0, "solver": "flow_euler", "schedule": "simple",
            "denoise": 1.0}},
        "adapter": {"class_type": "WanModelToMODEL", "inputs": {"model": ["model_ours", 0]}},
        "adapter_shift": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["adapter", 0], "shift": 5.0}},
        "adapter_sampled": {"class_type": "KSampler", "inputs": {
            **sampling, "model": ["adapter_shift", 0], "latent_image": ["latent_native", 0]}},
        "native_model": {"class_type": "UNETLoader", "inputs": {"unet_name": transformer, "weight_dtype": "default"}},
        "native_shift": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["native_model", 0], "shift": 5.0}},
        "native": {"class_type": "KSampler", "inputs": {
            **sampling, "model": ["native_shift", 0], "latent_image": ["latent_native", 0]}},
        "save_latent_ours": {"class_type": "SaveLatent", "inputs": {"samples": ["latent_ours", 0],
                                                                    "filename_prefix": "ti2v/latent_ours"}},
        "save_latent_native": {"class_type": "SaveLatent", "inputs": {"samples": ["latent_native", 0],
                                                                      "filename_prefix": "ti2v/latent_native"}},
        "save_ours": {"class_type": "SaveLatent", "inputs": {"samples": ["ours", 0], "filename_prefix": "ti2v/ours"}},
        "save_adapter": {"class_type": "SaveLatent", "inputs": {"samples": ["adapter_sampled", 0],
                                                                "filename_prefix": "ti2v/adapter"}},
        "save_native": {"class_type": "SaveLatent", "inputs": {"samples": ["native", 0],
                                                               "filename_prefix": "ti2v/native"}},
    }


def test_ti2v_image_to_video_interoperates_with_native_wan22(comfy_server, wan22_vae, ti2v):
    """The pack's Wan2.2 TI2V Latent equals native Wan22ImageToVideoLatent; from that latent the pack's Wan Sampler
    and KSampler on the pack's MODEL adapter equal native KSampler on the same file (euler, simple)."""
    entry = comfy_server.run_prompt(_ti2v_graph(wan22_vae, ti2v), timeout=900)
    latent_ours, latent_native = (_latent(comfy_server, entry, n) for n in ("save_latent_ours", "save_latent_native"))
    width, height, frames = TI2V_SIZE
    assert latent_ours.shape == latent_native.shape == (1, 48, (frames - 1) // 4 + 1, height // 16, width // 16)
    assert (latent_ours - latent_native).abs().max() <= 2e-6 * latent_native.abs().max()
    native = _latent(comfy_server, entry, "save_native")
    for node in ("save_ours", "save_adapter"):
        sampled = _latent(comfy_server, entry, node)
        assert_native_close(sampled, native, NATIVE_RELATIVE)
        assert torch.equal(sampled[:, :, 0], latent_native[:, :, 0]) or (
            sampled[:, :, 0] - latent_native[:, :, 0]).abs().max() <= 1e-5, "the given frame is kept"
