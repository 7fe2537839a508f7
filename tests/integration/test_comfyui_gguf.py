"""GGUF files in a real ComfyUI: listed by the Wan loaders, loaded through ComfyUI's ModelPatcher with the quantized
weights kept quantized, and sampled to the same latent as the same weights dequantized by gguf-py into a plain file.
"""

import os

import pytest
import torch
from gguf_files import T, reference_state_dict, umt5_to_llama_cpp, write_umt5_gguf, write_wan_gguf
from safetensors.torch import load_file, save_file
from tiny_models import tiny_wan_set

FILES = {"transformer": "wan2.1-t2v-tiny-Q8_0.gguf", "text_encoder": os.path.join("umt5_gguf", "umt5-tiny-Q8_0.gguf")}
REFERENCES = {role: name.replace(".gguf", "-dequantized.safetensors") for role, name in FILES.items()}


@pytest.fixture(scope="module")
def gguf_models(comfy_models_dir):
    """Q8_0 GGUFs of the server's tiny Wan set (the transformer's rows are too short for K-quants), the UMT5 one with
    its spiece.model beside it, and their gguf-py dequantisations as safetensors files next to them."""
    models = tiny_wan_set(text_width=4096)
    transformer = os.path.join(comfy_models_dir, "diffusion_models", FILES["transformer"])
    text_encoder = os.path.join(comfy_models_dir, "text_encoders", FILES["text_encoder"])
    os.makedirs(os.path.dirname(text_encoder), exist_ok=True)
    with open(os.path.join(os.path.dirname(text_encoder), "spiece.model"), "wb") as f:
        f.write(models["spm"])
    write_wan_gguf(models["transformer"], transformer, T.Q8_0)
    write_umt5_gguf(models["umt5"], text_encoder, T.Q8_0)
    save_file({k: v.contiguous() for k, v in reference_state_dict(transformer).items()},
              os.path.join(comfy_models_dir, "diffusion_models", REFERENCES["transformer"]))
    hf_names = {umt5_to_llama_cpp(k): k for k in models["umt5"].state_dict() if k != "encoder.embed_tokens.weight"}
    spiece = torch.frombuffer(bytearray(models["spm"]), dtype=torch.uint8)
    save_file({**{hf_names[k]: v.contiguous() for k, v in reference_state_dict(text_encoder).items()},
               "spiece_model": spiece}, os.path.join(comfy_models_dir, "text_encoders", REFERENCES["text_encoder"]))


def _chain(files: dict, tag: str) -> dict:
    return {
        f"{tag}_te": {"class_type": "WanTextEncoderLoader", "inputs": {"model_name": files["text_encoder"],
                                                                       "dtype": "fp32"}},
        f"{tag}_enc": {"class_type": "WanTextEncode", "inputs": {
            "text_encoder": [f"{tag}_te", 0], "prompt": "a fox runs through the snow", "negative_prompt": "blurry",
            "batch_prompts": False}},
        f"{tag}_model": {"class_type": "WanTransformerLoader", "inputs": {"model_name": files["transformer"],
                                                                          "dtype": "fp32"}},
        f"{tag}_sample": {"class_type": "WanSampler", "inputs": {
            "model": [f"{tag}_model", 0], "positive": [f"{tag}_enc", 0], "negative": [f"{tag}_enc", 1],
            "latent": ["empty", 0], "seed": 5, "steps": 2, "cfg": 6.0, "shift": 0.0, "solver": "flow_euler",
            "schedule": "default", "denoise": 1.0}},
        f"{tag}_save": {"class_type": "SaveLatent", "inputs": {"samples": [f"{tag}_sample", 0],
                                                               "filename_prefix": f"gguf/{tag}"}},
    }


def test_gguf_files_are_listed_and_sample_as_their_dequantisation(comfy_server, gguf_models):
    for node, role in (("WanTransformerLoader", "transformer"), ("WanTextEncoderLoader", "text_encoder")):
        choices = comfy_server.get_json(f"/object_info/{node}")[node]["input"]["required"]["model_name"][0]
        assert FILES[role] in choices, choices
    native = comfy_server.get_json("/object_info/UNETLoader")["UNETLoader"]["input"]["required"]["unet_name"][0]
    assert FILES["transformer"] not in native, "ComfyUI's own loader list stays as it was"
    graph = {"empty": {"class_type": "EmptyWanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5,
                                                                         "batch_size": 1}},
             **_chain(FILES, "gguf"), **_chain(REFERENCES, "reference")}
    entry = comfy_server.run_prompt(graph, timeout=600)
    latents = {}
    for tag in ("gguf", "reference"):
        item = entry["outputs"][f"{tag}_save"]["latents"][0]
        latents[tag] = load_file(os.path.join(comfy_server.output_dir, item["subfolder"], item["filename"]))[
            "latent_tensor"]
    assert latents["gguf"].shape == (1, 16, 2, 4, 4) and latents["gguf"].std() > 0.1
    assert torch.equal(latents["gguf"], latents["reference"])
