"""Wan Fun-Camera in a real ComfyUI against its native camera nodes, on a tiny file made with ComfyUI's own
CameraWanModel: the pack's preset embeddings equal native WanCameraEmbedding's bit for bit; the pack's camera node +
Wan Sampler (flow_euler, simple) equal native WanCameraEmbedding -> WanCameraImageToVideo -> KSampler(euler, simple)
with and without a start image and CLIP features; each side's camera embedding works in the other side's
conditioning node."""

import os

import pytest
import torch
from conftest import NATIVE_RELATIVE, REAL_SIZE_CLIP_VISION, REAL_SIZE_WAN_VAE, assert_native_close, run_comfy_job
from safetensors.torch import load_file
from sample_media import INPUT_IMAGE
from tiny_models import WAN_FILES

WIDTH, HEIGHT, FRAMES, SEED, STEPS, CFG, SHIFT = 48, 32, 9, 17, 3, 5.0, 8.0
CAMERA_FILE = "wan2.1_fun_camera_tiny_native.safetensors"


@pytest.fixture(scope="module")
def native_camera(comfy_models_dir, tmp_path_factory):
    """ComfyUI writes the Fun-Camera file into the server's diffusion_models and its embeddings beside the pack's."""
    folder = tmp_path_factory.mktemp("camera_job")
    job = {"model_file": os.path.join(comfy_models_dir, "diffusion_models", CAMERA_FILE),
           "output": str(folder / "embeddings")}
    run_comfy_job("camera_in_comfyui.py", job, folder)
    return load_file(str(folder / "embeddings.safetensors"))


def test_preset_embeddings_equal_native_bit_for_bit(native_camera):
    names = {k.rsplit("/", 1)[0] for k in native_camera}
    assert len(names) == 18
    for name in names:
        assert torch.equal(native_camera[name + "/pack"], native_camera[name + "/native"]), name


def _graph(preset: str, start_image: bool, swap_embeddings: bool, clip: bool = False) -> dict:
    """Both samplers on the same prompt, file and seed; `swap_embeddings` gives each conditioning node the other
    side's camera embedding; `clip`: the start image's CLIP features from each side's CLIP vision nodes (CLIP ViT-H
    with random weights at its real size, as native loads only that)."""
    size = {"width": WIDTH, "height": HEIGHT, "length": FRAMES}
    graph = {
        "te": {"class_type": "WanTextEncoderLoader", "inputs": {"model_name": WAN_FILES["text_encoder"],
                                                                "dtype": "fp32"}},
        "enc": {"class_type": "WanTextEncode", "inputs": {"text_encoder": ["te", 0], "prompt": "a room, slowly",
                                                          "negative_prompt": "blurry", "batch_prompts": False}},
        "image": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGE}},
        "pack_path": {"class_type": "WanCameraPreset", "inputs": {"camera_pose": preset, **size, "speed": 1.0,
                                                                  "fx": 0.5, "fy": 0.5, "cx": 0.5, "cy": 0.5}},
        "native_path": {"class_type": "WanCameraEmbedding", "inputs": {"camera_pose": preset, **size, "speed": 1.0}},
        "pack_vae": {"class_type": "WanVAELoader", "inputs": {"vae_name": REAL_SIZE_WAN_VAE, "dtype": "fp32"}},
        "native_vae": {"class_type": "VAELoader", "inputs": {"vae_name": REAL_SIZE_WAN_VAE}},
        "pack_cond": {"class_type": "WanCameraImageToVideoConditioning", "inputs": {
            "positive": ["enc", 0], "negative": ["enc", 1], "vae": ["pack_vae", 0], **size, "batch_size": 1,
            "camera_conditions": ["native_path" if swap_embeddings else "pack_path", 0]}},
        "native_cond": {"class_type": "WanCameraImageToVideo", "inputs": {
            "positive": ["enc", 0], "negative": ["enc", 1], "vae": ["native_vae", 0], **size, "batch_size": 1,
            "camera_conditions": ["pack_path" if swap_embeddings else "native_path", 0]}},
        "pack_model": {"class_type": "WanTransformerLoader", "inputs": {"model_name": CAMERA_FILE, "dtype": "fp32"}},
        "pack": {"class_type": "WanSampler", "inputs": {
            "model": ["pack_model", 0], "positive": ["pack_cond", 0], "negative": ["pack_cond", 1],
            "latent": ["pack_cond", 2], "seed": SEED, "steps": STEPS, "cfg": CFG, "shift": SHIFT,
            "solver": "flow_euler", "schedule": "simple", "denoise": 1.0}},
        "native_model": {"class_type": "UNETLoader", "inputs": {"unet_name": CAMERA_FILE, "weight_dtype": "default"}},
        "shift": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["native_model", 0], "shift": SHIFT}},
        "native": {"class_type": "KSampler", "inputs": {
            "model": ["shift", 0], "positive": ["native_cond", 0], "negative": ["native_cond", 1],
            "latent_image": ["native_cond", 2], "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
            "scheduler": "simple", "denoise": 1.0}},
        "save_pack": {"class_type": "SaveLatent", "inputs": {"samples": ["pack", 0], "filename_prefix": "cam/pack"}},
        "save_native": {"class_type": "SaveLatent", "inputs": {"samples": ["native", 0],
                                                               "filename_prefix": "cam/native"}},
    }
    if start_image:
        graph["pack_cond"]["inputs"]["start_image"] = ["image", 0]
        graph["native_cond"]["inputs"]["start_image"] = ["image", 0]
    if clip:
        graph.update({
            "pack_clip": {"class_type": "WanCLIPVisionLoader", "inputs": {"clip_name": REAL_SIZE_CLIP_VISION,
                                                                          "dtype": "fp32"}},
            "pack_features": {"class_type": "WanCLIPVisionEncode", "inputs": {
                "clip_vision": ["pack_clip", 0], "image": ["image", 0], "crop": "center"}},
            "native_clip": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": REAL_SIZE_CLIP_VISION}},
            "native_features": {"class_type": "CLIPVisionEncode", "inputs": {
                "clip_vision": ["native_clip", 0], "image": ["image", 0], "crop": "center"}},
        })
        graph["pack_cond"]["inputs"]["clip_vision_output"] = ["pack_features", 0]
        graph["native_cond"]["inputs"]["clip_vision_output"] = ["native_features", 0]
    return graph


def _latent(server, entry, node):
    item = entry["outputs"][node]["latents"][0]
    return load_file(os.path.join(server.output_dir, item["subfolder"], item["filename"]))["latent_tensor"]


@pytest.mark.parametrize("preset,start_image,swap,clip", [
    ("Pan Left", True, False, False), ("ClockWise (CW)", False, False, False), ("Zoom In", True, True, False),
    ("Pan Down", True, False, True),
])
def test_pack_camera_sampling_equals_native(comfy_server, native_camera, preset, start_image, swap, clip):
    entry = comfy_server.run_prompt(_graph(preset, start_image, swap, clip), timeout=600)
    pack, native = _latent(comfy_server, entry, "save_pack"), _latent(comfy_server, entry, "save_native")
    assert pack.shape == (1, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)
    assert_native_close(pack, native, NATIVE_RELATIVE)


def test_camera_changes_the_video(comfy_server, native_camera):
    """The comparison above means something: another camera path gives another latent."""
    pan = comfy_server.run_prompt(_graph("Pan Left", False, False), timeout=600)
    still = comfy_server.run_prompt(_graph("Static", False, False), timeout=600)
    a, b = _latent(comfy_server, pan, "save_pack"), _latent(comfy_server, still, "save_pack")
    assert (a - b).abs().max() > 1e-3 * a.abs().max()
