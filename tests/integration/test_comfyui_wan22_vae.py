"""The Wan2.2 VAE (48 channels) in a real ComfyUI: the pack's encode equals native VAE Encode on the same file, and
latents pass between the pack's decoder and native VAE Decode in both directions."""

import os

import pytest
import torch
from conftest import INPUT_SIZE
from sample_media import INPUT_VIDEO
from test_comfyui_wan import _frames, _latent

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
    assert delta <= 2e-6 * largest, "both encode in float32: measured 3.3e-7 (0.3.64) and 6.5e-7 (0.33.0) of the largest value"
    ours_decoder, native_decoder = _frames(comfy_server, entry, "img_ours"), _frames(comfy_server, entry, "img_native")
    assert ours_decoder.shape == native_decoder.shape and ours_decoder.shape[0] == frames
    assert (ours_decoder - native_decoder).abs().max() <= 2, "8-bit frames differ by more than rounding"
    assert ours_decoder.std() > 1, "flat frames would make the comparison meaningless"
    assert torch.isfinite(ours).all()
