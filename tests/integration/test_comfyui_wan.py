"""Wan2.1 in a real ComfyUI: the example workflow makes MP4s; our sampler equals the native KSampler(euler, simple);
latents pass between our nodes and the native VAE nodes in both directions."""

import io
import json
import os

import av
import torch
from conftest import NATIVE_RELATIVE, REAL_SIZE_WAN_VAE, assert_native_close, use_tiny_wan_files
from PIL import Image
from safetensors.torch import load_file
from tiny_models import WAN_FILES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WIDTH, HEIGHT, FRAMES = 48, 32, 9
PROMPT = "a fox runs through the snow"


def _example_graph(seed: int) -> dict:
    graph = json.load(open(os.path.join(ROOT, "workflows", "api", "wan_text_to_video.json")))
    use_tiny_wan_files(graph)
    graph["4"]["inputs"].update(prompt=f"{PROMPT}\na cat sleeps on a sofa", batch_prompts=True)
    graph["5"]["inputs"].update(width=WIDTH, height=HEIGHT, length=FRAMES)
    graph["6"]["inputs"].update(seed=seed, steps=3)
    return graph


def _video_info(data: bytes):
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return len(frames), (frames[0].width, frames[0].height), stream.codec_context.name


def test_example_workflow_saves_one_mp4_per_prompt_and_a_native_video(comfy_server):
    entry = comfy_server.run_prompt(_example_graph(seed=3))
    ours = entry["outputs"]["8"]["images"]
    native = entry["outputs"]["10"]["images"]
    assert len(ours) == 2 and len(native) == 1
    for item in ours:
        data = comfy_server.get(f"/view?filename={item['filename']}&subfolder={item['subfolder']}&type=output")
        assert _video_info(data) == (FRAMES, (WIDTH, HEIGHT), "h264")
    data = comfy_server.get(f"/view?filename={native[0]['filename']}&subfolder={native[0]['subfolder']}&type=output")
    assert _video_info(data)[0] == 2 * FRAMES, "core CreateVideo gets the frames of both videos"


def _sampling_graph(seed: int, steps: int) -> dict:
    """Our WanSampler and the native UNETLoader -> ModelSamplingSD3 -> KSampler on the same file, prompt and seed."""
    return {
        "te": {"class_type": "WanTextEncoderLoader", "inputs": {"model_name": WAN_FILES["text_encoder"], "dtype": "fp32"}},
        "enc": {"class_type": "WanTextEncode", "inputs": {"text_encoder": ["te", 0], "prompt": PROMPT,
                                                          "negative_prompt": "blurry", "batch_prompts": False}},
        "empty": {"class_type": "EmptyWanLatentVideo", "inputs": {"width": WIDTH, "height": HEIGHT, "length": FRAMES,
                                                                 "batch_size": 1}},
        "ours_model": {"class_type": "WanTransformerLoader", "inputs": {"model_name": WAN_FILES["transformer"],
                                                                        "dtype": "fp32"}},
        "ours": {"class_type": "WanSampler", "inputs": {
            "model": ["ours_model", 0], "positive": ["enc", 0], "negative": ["enc", 1], "latent": ["empty", 0],
            "seed": seed, "steps": steps, "cfg": 6.0, "shift": 8.0, "solver": "flow_euler", "schedule": "simple",
            "denoise": 1.0}},
        "native_model": {"class_type": "UNETLoader", "inputs": {"unet_name": WAN_FILES["transformer"],
                                                                "weight_dtype": "default"}},
        "shift": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["native_model", 0], "shift": 8.0}},
        "native": {"class_type": "KSampler", "inputs": {
            "model": ["shift", 0], "positive": ["enc", 0], "negative": ["enc", 1], "latent_image": ["empty", 0],
            "seed": seed, "steps": steps, "cfg": 6.0, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 1.0}},
        "save_ours": {"class_type": "SaveLatent", "inputs": {"samples": ["ours", 0], "filename_prefix": "cmp/ours"}},
        "save_native": {"class_type": "SaveLatent", "inputs": {"samples": ["native", 0],
                                                               "filename_prefix": "cmp/native"}},
        "vae_ours": {"class_type": "WanVAELoader", "inputs": {"vae_name": REAL_SIZE_WAN_VAE, "dtype": "fp32"}},
        "vae_native": {"class_type": "VAELoader", "inputs": {"vae_name": REAL_SIZE_WAN_VAE}},
        "decode_ours_native_latent": {"class_type": "WanVAEDecode", "inputs": {
            "vae": ["vae_ours", 0], "samples": ["native", 0], "tiling": "off", "tile_size": 1024, "tile_overlap": 64}},
        "decode_native_our_latent": {"class_type": "VAEDecode", "inputs": {"vae": ["vae_native", 0],
                                                                          "samples": ["ours", 0]}},
        "img_ours": {"class_type": "SaveImage", "inputs": {"images": ["decode_ours_native_latent", 0],
                                                          "filename_prefix": "cmp/ours_decoder"}},
        "img_native": {"class_type": "SaveImage", "inputs": {"images": ["decode_native_our_latent", 0],
                                                            "filename_prefix": "cmp/native_decoder"}},
    }


def _latent(server, entry, node):
    item = entry["outputs"][node]["latents"][0]
    return load_file(os.path.join(server.output_dir, item["subfolder"], item["filename"]))["latent_tensor"]


def _frames(server, entry, node):
    images = entry["outputs"][node]["images"]
    return torch.stack([torch.tensor(list(Image.open(io.BytesIO(server.get(
        f"/view?filename={i['filename']}&subfolder={i['subfolder']}&type=output"))).getdata()), dtype=torch.float32)
        for i in images])


def test_our_sampler_equals_native_ksampler_and_latents_cross_decoders(comfy_server):
    entry = comfy_server.run_prompt(_sampling_graph(seed=21, steps=4), timeout=600)
    ours, native = _latent(comfy_server, entry, "save_ours"), _latent(comfy_server, entry, "save_native")
    assert ours.shape == native.shape == (1, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)
    assert_native_close(ours, native, NATIVE_RELATIVE)
    ours_decoder, native_decoder = _frames(comfy_server, entry, "img_ours"), _frames(comfy_server, entry, "img_native")
    assert ours_decoder.shape == native_decoder.shape and ours_decoder.shape[0] == FRAMES
    assert (ours_decoder - native_decoder).abs().max() <= 2, "8-bit frames differ by more than rounding"
    assert ours_decoder.std() > 1, "flat frames would make the comparison meaningless"
