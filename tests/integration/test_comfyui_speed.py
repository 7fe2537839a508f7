"""Speed options in a real ComfyUI: the served node, and a model shared by a sped-up and a plain branch of one graph.

The plain sampler on the loader's own handle gives the same latent whether or not the branch with the speed options
(an attention backend and a step cache, applied for that branch's run only) ran before it in the same prompt.
"""

import os

from safetensors.torch import load_file
from tiny_models import WAN_FILES

WIDTH, HEIGHT, FRAMES, STEPS = 48, 32, 9, 4


def _graph(threshold: float) -> dict:
    sampler = {"positive": ["enc", 0], "negative": ["enc", 1], "latent": ["empty", 0], "seed": 5, "steps": STEPS,
               "cfg": 6.0, "shift": 8.0, "solver": "flow_unipc", "schedule": "default", "denoise": 1.0}
    return {
        "te": {"class_type": "WanTextEncoderLoader", "inputs": {"model_name": WAN_FILES["text_encoder"],
                                                                "dtype": "fp32"}},
        "enc": {"class_type": "WanTextEncode", "inputs": {"text_encoder": ["te", 0], "prompt": "a fox in the snow",
                                                          "negative_prompt": "blurry", "batch_prompts": False}},
        "empty": {"class_type": "EmptyWanLatentVideo", "inputs": {"width": WIDTH, "height": HEIGHT, "length": FRAMES,
                                                                 "batch_size": 1}},
        "model": {"class_type": "WanTransformerLoader", "inputs": {"model_name": WAN_FILES["transformer"],
                                                                   "dtype": "fp32"}},
        "fast": {"class_type": "WanSpeedOptions", "inputs": {"model": ["model", 0], "attention": "_native_math",
                                                             "cache": "first_block", "threshold": threshold,
                                                             "compile": False}},
        "fast_sampler": {"class_type": "WanSampler", "inputs": {"model": ["fast", 0], **sampler}},
        # The plain sampler takes the fast one's latent, so it runs after it; at denoise 1 only its shape is used.
        "plain_sampler": {"class_type": "WanSampler", "inputs": {"model": ["model", 0],
                                                                 **sampler, "latent": ["fast_sampler", 0]}},
        "save_fast": {"class_type": "SaveLatent", "inputs": {"samples": ["fast_sampler", 0],
                                                             "filename_prefix": "speed/fast"}},
        "save_plain": {"class_type": "SaveLatent", "inputs": {"samples": ["plain_sampler", 0],
                                                              "filename_prefix": "speed/plain"}},
    }


def _latent(server, entry, node):
    item = entry["outputs"][node]["latents"][0]
    return load_file(os.path.join(server.output_dir, item["subfolder"], item["filename"]))["latent_tensor"]


def test_speed_nodes_are_served_with_their_choices(comfy_server):
    info = comfy_server.get_json("/object_info")
    for node, model_type in (("SanaSpeedOptions", "SANA_MODEL"), ("WanSpeedOptions", "WAN_MODEL")):
        required = info[node]["input"]["required"]
        assert info[node]["output"] == [model_type]
        assert required["attention"][0][0] == "default" and "_native_math" in required["attention"][0]
        assert required["cache"][1]["default"] == "none" and required["compile"][1]["default"] is False


def test_a_shared_model_is_unchanged_for_the_plain_branch(comfy_server):
    cached = comfy_server.run_prompt(_graph(threshold=0.0), timeout=600)
    fast, plain = _latent(comfy_server, cached, "save_fast"), _latent(comfy_server, cached, "save_plain")
    assert fast.shape == plain.shape == (1, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)
    # threshold 0 never skips; the math SDPA kernel differs from the default one by float rounding only
    assert (fast - plain).abs().max() <= 1e-4 * max(1.0, plain.abs().max().item())
    skipping = comfy_server.run_prompt(_graph(threshold=2.0), timeout=600)
    assert (_latent(comfy_server, skipping, "save_plain") - plain).abs().max() == 0
    assert (_latent(comfy_server, skipping, "save_fast") - plain).abs().max() > 1e-3, "threshold 2 skips steps"
