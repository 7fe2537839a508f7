"""Sana-Video in a real ComfyUI: text- and image-to-video latents of our sampler decode alike with our Wan VAE Decode
and ComfyUI's native VAE Decode (the Wan2.1 VAE at its real size, random weights)."""

from conftest import REAL_SIZE_WAN_VAE
from sample_media import INPUT_IMAGE
from test_comfyui_wan import _frames
from tiny_models import SANA_FILES, SANA_VIDEO_FILE

WIDTH, HEIGHT, FRAMES = 48, 32, 9  # the size of the server's INPUT_IMAGE


def _decoded_both_ways(name: str, latent: list) -> dict:
    return {
        f"{name}_ours": {"class_type": "WanVAEDecode", "inputs": {
            "vae": ["vae_ours", 0], "samples": latent, "tiling": "off", "tile_size": 1024, "tile_overlap": 64}},
        f"{name}_native": {"class_type": "VAEDecode", "inputs": {"vae": ["vae_native", 0], "samples": latent}},
        f"{name}_save_ours": {"class_type": "SaveImage", "inputs": {"images": [f"{name}_ours", 0],
                                                                    "filename_prefix": f"sana_video/{name}_ours"}},
        f"{name}_save_native": {"class_type": "SaveImage", "inputs": {"images": [f"{name}_native", 0],
                                                                      "filename_prefix": f"sana_video/{name}_native"}},
    }


def _sampler(latent: list, seed: int) -> dict:
    return {"class_type": "SanaVideoSampler", "inputs": {
        "model": ["model", 0], "positive": ["enc", 0], "negative": ["enc", 1], "latent": latent, "seed": seed,
        "steps": 3, "cfg": 6.0, "shift": 0.0, "solver": "flow_dpmpp_2m", "schedule": "default", "denoise": 1.0}}


def _graph() -> dict:
    return {
        "te": {"class_type": "SanaTextEncoderLoader", "inputs": {"model_name": SANA_FILES["text_encoder"],
                                                                 "dtype": "fp32"}},
        "enc": {"class_type": "SanaVideoTextEncode", "inputs": {
            "text_encoder": ["te", 0], "prompt": "a fox runs through the snow", "negative_prompt": "",
            "motion_score": 30, "batch_prompts": False}},
        "model": {"class_type": "SanaVideoTransformerLoader", "inputs": {"model_name": SANA_VIDEO_FILE,
                                                                         "dtype": "fp32"}},
        "vae_ours": {"class_type": "WanVAELoader", "inputs": {"vae_name": REAL_SIZE_WAN_VAE, "dtype": "fp32"}},
        "vae_native": {"class_type": "VAELoader", "inputs": {"vae_name": REAL_SIZE_WAN_VAE}},
        "empty": {"class_type": "EmptyWanLatentVideo", "inputs": {"width": WIDTH, "height": HEIGHT, "length": FRAMES,
                                                                 "batch_size": 1}},
        "t2v": _sampler(["empty", 0], seed=4),
        "image": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGE}},
        "i2v_latent": {"class_type": "SanaVideoImageToVideo", "inputs": {
            "vae": ["vae_ours", 0], "start_image": ["image", 0], "width": WIDTH, "height": HEIGHT, "length": FRAMES,
            "batch_size": 1}},
        "i2v": _sampler(["i2v_latent", 0], seed=5),
        **_decoded_both_ways("t2v", ["t2v", 0]),
        **_decoded_both_ways("i2v", ["i2v", 0]),
    }


def test_text_and_image_to_video_latents_decode_alike_with_ours_and_native(comfy_server):
    entry = comfy_server.run_prompt(_graph(), timeout=600)
    for name in ("t2v", "i2v"):
        ours, native = _frames(comfy_server, entry, f"{name}_save_ours"), _frames(comfy_server, entry,
                                                                                 f"{name}_save_native")
        assert ours.shape == native.shape == (FRAMES, WIDTH * HEIGHT, 3)
        assert (ours - native).abs().max() <= 2, f"{name}: 8-bit frames differ by more than rounding"
        assert ours.std() > 1, "flat frames would make the comparison meaningless"
