"""Wan LoRAs in a real ComfyUI: the patches ComfyUI builds (comfy.lora.load_lora, LoHa and LoKr included) and
applies (ModelPatcher, load_models_gpu) give diffusers' forward; the example LoRA workflow runs; our LoRA chain
samples what native LoraLoaderModelOnly + KSampler sample with the same files."""

import copy
import json
import os

import torch
from conftest import (
    NATIVE_RELATIVE, _require_comfyui, assert_native_close, run_comfy_job, use_tiny_wan_files,
)
from diffusers.loaders import WanLoraLoaderMixin
from safetensors.torch import load_file, save_file
from test_comfyui_wan import FRAMES, HEIGHT, PROMPT, WIDTH, _latent, _video_info
from tiny_models import WAN_FILES

import tiny_lora
from tiny_wan import tiny_wan_transformer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOLERANCE = 1e-5


def _inputs():
    generator = torch.Generator().manual_seed(7)
    return {"hidden_states": torch.randn(1, 16, 1, 4, 4, generator=generator), "timestep": torch.tensor([600.0]),
            "encoder_hidden_states": torch.randn(1, 5, 32, generator=generator)}


def _forward(model):
    with torch.no_grad():
        return model(**_inputs(), return_dict=False)[0]


def _diffusers(model, adapters):
    reference = copy.deepcopy(model)
    for index, (tensors, _) in enumerate(adapters):
        reference.load_lora_adapter(dict(tensors), prefix="transformer", adapter_name=f"a{index}")
    reference.set_adapters([f"a{i}" for i in range(len(adapters))], weights=[w for _, w in adapters])
    return _forward(reference)


def _with_deltas(model, deltas: dict, strength: float):
    """`model` with `strength` x each full weight delta added: the reference for LoHa / LoKr, from their definitions."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, delta in deltas.items():
            reference.get_parameter(name).add_(strength * delta)
    return _forward(reference)


def _loha_and_lokr(generator):
    """LoHa: dW = (w1_a w1_b) * (w2_a w2_b) * alpha / rank. LoKr: dW = kron(w1, w2) * alpha / rank, with rank that of
    the factor stored as two halves (a factor stored whole takes no alpha)."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator) * 0.3

    loha, loha_deltas = {}, {}
    layers = (("blocks.0.self_attn.q", "blocks.0.attn1.to_q"), ("blocks.1.ffn.0", "blocks.1.ffn.net.0.proj"))
    for original, diffusers in layers:
        out, inner = (128, 128) if "attn" in diffusers else (256, 128)
        w1a, w1b, w2a, w2b = randn(out, 2), randn(2, inner), randn(out, 2), randn(2, inner)
        loha.update({f"diffusion_model.{original}.hada_w1_a": w1a, f"diffusion_model.{original}.hada_w1_b": w1b,
                     f"diffusion_model.{original}.hada_w2_a": w2a, f"diffusion_model.{original}.hada_w2_b": w2b,
                     f"diffusion_model.{original}.alpha": torch.tensor(1.0)})
        loha_deltas[diffusers + ".weight"] = (w1a @ w1b) * (w2a @ w2b) * (1.0 / 2)
    w1, w2a, w2b, full1, full2 = randn(4, 4), randn(32, 2), randn(2, 32), randn(4, 8), randn(32, 32)
    lokr = {"lora_unet_blocks_0_cross_attn_o.lokr_w1": w1, "lora_unet_blocks_0_cross_attn_o.lokr_w2_a": w2a,
            "lora_unet_blocks_0_cross_attn_o.lokr_w2_b": w2b,
            "lora_unet_blocks_0_cross_attn_o.alpha": torch.tensor(1.0),
            "lora_unet_blocks_1_ffn_2.lokr_w1": full1, "lora_unet_blocks_1_ffn_2.lokr_w2": full2}
    lokr_deltas = {"blocks.0.attn2.to_out.0.weight": torch.kron(w1, w2a @ w2b) * (1.0 / 2),
                   "blocks.1.ffn.net.2.weight": torch.kron(full1, full2)}
    return loha, loha_deltas, lokr, lokr_deltas


def test_comfyui_patches_equal_diffusers_loha_lokr_and_restore_the_base(tmp_path):
    _require_comfyui()  # before writing models nobody would use
    model = tiny_wan_transformer(seed=3, text_dim=32)
    model.save_pretrained(str(tmp_path / "wan"))
    first, second, third = (tiny_lora.make_lora(model, rank=r, seed=s) for r, s in ((4, 1), (2, 2), (4, 3)))
    loha, loha_deltas, lokr, lokr_deltas = _loha_and_lokr(torch.Generator().manual_seed(5))
    loras = tmp_path / "loras"
    loras.mkdir()
    files = {"peft": tiny_lora.peft(first),
             "musubi": tiny_lora.original(second, "lora_unet_", ("lora_down", "lora_up"), 8.0, kohya=True),
             "comfy": {**tiny_lora.original(third), **tiny_lora.diff_b(third)}, "loha": loha, "lokr": lokr}
    for name, tensors in files.items():
        tiny_lora.save(tensors, str(loras / f"{name}.safetensors"))
    save_file(_inputs(), str(tmp_path / "inputs.safetensors"))
    runs = [("peft", [["peft.safetensors", 0.7]]), ("base", []),
            ("chain", [["musubi.safetensors", -0.5], ["comfy.safetensors", 0.9]]),
            ("loha", [["loha.safetensors", 0.8]]), ("lokr", [["lokr.safetensors", 1.2]]), ("base_again", [])]
    job = {"model": str(tmp_path / "wan"), "loras": str(loras),
           "inputs": str(tmp_path / "inputs.safetensors"), "runs": runs, "output": str(tmp_path / "out.safetensors")}
    run_comfy_job("lora_in_comfyui.py", job, tmp_path)
    out = load_file(str(tmp_path / "out.safetensors"))

    def reference(name):
        return WanLoraLoaderMixin.lora_state_dict(load_file(str(loras / f"{name}.safetensors")))

    expected = {
        "peft": _diffusers(model, [(tiny_lora.peft(first), 0.7)]),
        "base": _forward(model),
        "chain": _diffusers(model, [(reference("musubi"), -0.5), (reference("comfy"), 0.9)]),
        "loha": _with_deltas(model, loha_deltas, 0.8),
        "lokr": _with_deltas(model, lokr_deltas, 1.2),
    }
    for name, value in expected.items():
        assert (out[name] - value).abs().max() <= TOLERANCE, name
        if name != "base":
            assert (out[name] - expected["base"]).abs().max() > 100 * TOLERANCE, f"{name} must change the output"
    assert torch.equal(out["base"], out["base_again"]), "ComfyUI restores the weights the LoRA clones patched"


def test_example_lora_workflow_runs(comfy_server):
    graph = json.load(open(os.path.join(ROOT, "workflows", "api", "wan_lora_text_to_video.json")))
    loras = [node for node in graph.values() if node["class_type"] == "WanLoraLoader"]
    assert len(loras) == 2 and loras[1]["inputs"]["model"][0] != loras[0]["inputs"]["model"][0], "a chain of two"
    for node, name in zip(loras, tiny_lora.WAN_LORA_FILES):
        node["inputs"]["lora_name"] = name
    use_tiny_wan_files(graph)
    graph["5"]["inputs"].update(width=WIDTH, height=HEIGHT, length=FRAMES)
    graph["6"]["inputs"].update(seed=5, steps=2)
    entry = comfy_server.run_prompt(graph)
    videos = entry["outputs"]["8"]["images"]
    data = comfy_server.get(f"/view?filename={videos[0]['filename']}&subfolder={videos[0]['subfolder']}&type=output")
    assert _video_info(data) == (FRAMES, (WIDTH, HEIGHT), "h264")


def test_our_lora_chain_samples_what_native_lora_loaders_sample(comfy_server):
    """The same two files through our Wan LoRA Loaders and native LoraLoaderModelOnly: same latents."""
    strengths = (0.8, -0.6)
    graph = {
        "te": {"class_type": "WanTextEncoderLoader", "inputs": {"model_name": WAN_FILES["text_encoder"],
                                                                "dtype": "fp32"}},
        "enc": {"class_type": "WanTextEncode", "inputs": {"text_encoder": ["te", 0], "prompt": PROMPT,
                                                          "negative_prompt": "blurry", "batch_prompts": False}},
        "empty": {"class_type": "EmptyWanLatentVideo", "inputs": {"width": WIDTH, "height": HEIGHT, "length": FRAMES,
                                                                 "batch_size": 1}},
        "ours_model": {"class_type": "WanTransformerLoader", "inputs": {"model_name": WAN_FILES["transformer"],
                                                                        "dtype": "fp32"}},
        "native_model": {"class_type": "UNETLoader", "inputs": {"unet_name": WAN_FILES["transformer"],
                                                                "weight_dtype": "default"}},
    }
    ours, native = ["ours_model", 0], ["native_model", 0]
    for index, (name, strength) in enumerate(zip(tiny_lora.WAN_LORA_FILES, strengths)):
        graph[f"ours_lora{index}"] = {"class_type": "WanLoraLoader", "inputs": {
            "model": ours, "lora_name": name, "strength": strength}}
        graph[f"native_lora{index}"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": native, "lora_name": name, "strength_model": strength}}
        ours, native = [f"ours_lora{index}", 0], [f"native_lora{index}", 0]
    graph["shift"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": native, "shift": 8.0}}
    sampling = {"positive": ["enc", 0], "negative": ["enc", 1], "seed": 8, "steps": 3, "cfg": 6.0, "denoise": 1.0}
    for name, model in (("ours", ours), ("ours_base", ["ours_model", 0])):
        graph[name] = {"class_type": "WanSampler", "inputs": {
            "model": model, "latent": ["empty", 0], "shift": 8.0, "solver": "flow_euler", "schedule": "simple",
            **sampling}}
    graph["native"] = {"class_type": "KSampler", "inputs": {
        "model": ["shift", 0], "latent_image": ["empty", 0], "sampler_name": "euler", "scheduler": "simple",
        **sampling}}
    for name in ("ours", "ours_base", "native"):
        graph[f"save_{name}"] = {"class_type": "SaveLatent", "inputs": {"samples": [name, 0],
                                                                        "filename_prefix": f"lora/{name}"}}
    entry = comfy_server.run_prompt(graph, timeout=600)
    latents = {name: _latent(comfy_server, entry, f"save_{name}") for name in ("ours", "ours_base", "native")}
    scale = max(1.0, latents["native"].abs().max().item())
    assert_native_close(latents["ours"], latents["native"], NATIVE_RELATIVE)
    assert (latents["ours"] - latents["ours_base"]).abs().max() > 0.05 * scale, "the LoRAs must change the result"
    assert "lora key not loaded" not in comfy_server.log_tail(400), "native ComfyUI reads every key of the files"

