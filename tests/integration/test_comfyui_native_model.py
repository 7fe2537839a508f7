"""The MODEL adapters in a real ComfyUI: the core KSampler (and SamplerCustomAdvanced) on "Wan / Sana Model to MODEL"
equals our own samplers' flow Euler run on the same weights, prompt and seed; the model's default shift, a
ModelSamplingSD3 shift and a LoRA applied before the adapter all carry over."""

import json
import os

import torch
from conftest import (
    NATIVE_RELATIVE, _require_comfyui, assert_native_close, run_comfy_job, use_tiny_wan_files,
)
from safetensors.torch import load_file, save_file
from tiny_lora import WAN_LORA_FILES
from tiny_models import SANA_FILES, WAN_FILES
from tiny_sana import tiny_sana_transformer
from tiny_wan import tiny_wan_transformer, write_wan_layouts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WIDTH, HEIGHT, FRAMES = 48, 32, 9
SEED, STEPS, CFG = 21, 4, 6.0


def _node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def _save(name: str, source: str) -> dict:
    return _node("SaveLatent", samples=[source, 0], filename_prefix=f"native/{name}")


def _ksampler(model: str, latent: str, cfg: float = CFG) -> dict:
    return _node("KSampler", model=[model, 0], positive=["enc", 0], negative=["enc", 1], latent_image=[latent, 0],
                 seed=SEED, steps=STEPS, cfg=cfg, sampler_name="euler", scheduler="simple", denoise=1.0)


def _wan_graph() -> dict:
    """WanSampler(flow_euler, simple) next to KSampler(euler, simple) on the adapter: the model's default shift
    (5 for this tiny model, as for every non-1.3B size), ModelSamplingSD3(3) against shift 3, and a LoRA before the
    adapter against the LoRA'd WanSampler."""
    def ours(model: str, shift: float) -> dict:
        return _node("WanSampler", model=[model, 0], positive=["enc", 0], negative=["enc", 1], latent=["empty", 0],
                     seed=SEED, steps=STEPS, cfg=CFG, shift=shift, solver="flow_euler", schedule="simple",
                     denoise=1.0)

    graph = {
        "te": _node("WanTextEncoderLoader", model_name=WAN_FILES["text_encoder"], dtype="fp32"),
        "enc": _node("WanTextEncode", text_encoder=["te", 0], prompt="a fox runs through the snow",
                     negative_prompt="blurry", batch_prompts=False),
        "empty": _node("EmptyWanLatentVideo", width=WIDTH, height=HEIGHT, length=FRAMES, batch_size=1),
        "wan": _node("WanTransformerLoader", model_name=WAN_FILES["transformer"], dtype="fp32"),
        "lora": _node("WanLoraLoader", model=["wan", 0], lora_name=WAN_LORA_FILES[0], strength=0.8),
        "native": _node("WanModelToMODEL", model=["wan", 0]),
        "native_lora": _node("WanModelToMODEL", model=["lora", 0]),
        "shift3": _node("ModelSamplingSD3", model=["native", 0], shift=3.0),
        "ours_default": ours("wan", 0.0),
        "ours_shift3": ours("wan", 3.0),
        "ours_lora": ours("lora", 0.0),
        "k_default": _ksampler("native", "empty"),
        "k_shift3": _ksampler("shift3", "empty"),
        "k_lora": _ksampler("native_lora", "empty"),
    }
    for name in ("ours_default", "ours_shift3", "ours_lora", "k_default", "k_shift3", "k_lora"):
        graph[f"save_{name}"] = _save(name, name)
    return graph


def _latent(server, entry, node: str):
    item = entry["outputs"][node]["latents"][0]
    return load_file(os.path.join(server.output_dir, item["subfolder"], item["filename"]))["latent_tensor"]


def _assert_close(ours, native):
    assert_native_close(ours, native, NATIVE_RELATIVE)


def test_ksampler_on_the_wan_adapter_equals_our_sampler(comfy_server):
    entry = comfy_server.run_prompt(_wan_graph(), timeout=600)
    latents = {name: _latent(comfy_server, entry, f"save_{name}") for name in (
        "ours_default", "ours_shift3", "ours_lora", "k_default", "k_shift3", "k_lora")}
    assert latents["k_default"].shape == (1, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)
    for case in ("default", "shift3", "lora"):
        _assert_close(latents[f"ours_{case}"], latents[f"k_{case}"])
    # the three cases differ, so each comparison checks its own setting
    assert (latents["k_default"] - latents["k_shift3"]).abs().max() > 1e-2
    assert (latents["k_default"] - latents["k_lora"]).abs().max() > 1e-2


def _sana_graph() -> dict:
    """SanaSampler(flow_euler) on the sigmas of ComfyUI's BasicScheduler(simple) for the adapter (default shift 3),
    next to KSampler(euler, simple) and SamplerCustomAdvanced(CFGGuider, euler) on the adapter."""
    return {
        "te": _node("SanaTextEncoderLoader", model_name=SANA_FILES["text_encoder"], dtype="fp32"),
        "enc": _node("SanaTextEncode", text_encoder=["te", 0], prompt="a red apple on a table",
                     negative_prompt="blurry"),
        "empty": _node("EmptySanaLatent", width=96, height=64, batch_size=1, resolution_bin="off"),
        "sana": _node("SanaTransformerLoader", model_name=SANA_FILES["transformer"], dtype="fp32"),
        "native": _node("SanaModelToMODEL", model=["sana", 0]),
        "sigmas": _node("BasicScheduler", model=["native", 0], scheduler="simple", steps=STEPS, denoise=1.0),
        "ours": _node("SanaSampler", model=["sana", 0], positive=["enc", 0], negative=["enc", 1],
                      latent=["empty", 0], seed=SEED, steps=STEPS, cfg=4.5, shift=0.0, solver="flow_euler",
                      denoise=1.0, sigmas=["sigmas", 0]),
        "k": _ksampler("native", "empty", cfg=4.5),
        "noise": _node("RandomNoise", noise_seed=SEED),
        "guider": _node("CFGGuider", model=["native", 0], positive=["enc", 0], negative=["enc", 1], cfg=4.5),
        "euler": _node("KSamplerSelect", sampler_name="euler"),
        "custom": _node("SamplerCustomAdvanced", noise=["noise", 0], guider=["guider", 0], sampler=["euler", 0],
                        sigmas=["sigmas", 0], latent_image=["empty", 0]),
        "save_ours": _save("sana_ours", "ours"),
        "save_k": _save("sana_k", "k"),
        "save_custom": _save("sana_custom", "custom"),
    }


def test_ksampler_and_sampler_custom_advanced_on_the_sana_adapter_equal_our_sampler(comfy_server):
    entry = comfy_server.run_prompt(_sana_graph(), timeout=600)
    ours, k, custom = (_latent(comfy_server, entry, node) for node in ("save_ours", "save_k", "save_custom"))
    assert ours.shape == (1, 32, 2, 3)
    assert ours.std() > 0.1
    _assert_close(ours, k)
    _assert_close(ours, custom)


def test_adapter_refuses_a_sprint_model_with_a_clear_error(comfy_server):
    from tiny_models import SANA_SPRINT_FILE

    graph = {"sana": _node("SanaTransformerLoader", model_name=SANA_SPRINT_FILE, dtype="fp32"),
             "native": _node("SanaModelToMODEL", model=["sana", 0]),
             "sigmas": _node("BasicScheduler", model=["native", 0], scheduler="simple", steps=2, denoise=1.0),
             "out": _node("PreviewAny", source=["sigmas", 0])}
    _, messages = comfy_server.run_prompt_ws(graph)
    errors = [m["data"] for m in messages if m["type"] == "execution_error"]
    assert errors and errors[0]["node_id"] == "native" and "Sana-Sprint" in errors[0]["exception_message"]


def test_workflow_twin_runs(comfy_server):
    graph = json.load(open(os.path.join(ROOT, "workflows", "api", "wan_native_ksampler.json")))
    for node in use_tiny_wan_files(graph).values():
        inputs = node["inputs"]
        if node["class_type"] == "EmptyWanLatentVideo":
            inputs.update(width=WIDTH, height=HEIGHT, length=FRAMES)
        elif node["class_type"] == "KSampler":
            inputs["steps"] = 2
    entry = comfy_server.run_prompt(graph, timeout=600)
    assert any(output.get("images") for output in entry["outputs"].values())


def test_apply_model_full_and_partial_loads_and_shared_weights(tmp_path):
    """In ComfyUI's Python: apply_model on the adapter is x - sigma * the diffusers module's velocity (Sana with a
    padded prompt's mask), also when ComfyUI's ModelPatcher loads it partially (layers left offloaded, cast on
    call); the adapter and the handle never stay loaded together on their shared weights."""
    _require_comfyui()  # before writing models nobody would use
    wan = write_wan_layouts(tiny_wan_transformer(seed=5), str(tmp_path / "wan"))["diffusers_single"]
    sana = str(tmp_path / "sana.safetensors")
    save_file(tiny_sana_transformer("qk_norm", seed=6).state_dict(), sana)
    job = {"models": {"wan": wan, "sana": sana}, "output": str(tmp_path / "out")}
    run_comfy_job("native_model_in_comfyui.py", job, tmp_path)
    out = load_file(str(tmp_path / "out.safetensors"))
    results = json.load(open(tmp_path / "out.json"))
    for name, result in results.items():
        reference = out[f"{name}.reference"]
        assert (out[f"{name}.full"] - reference).abs().max() <= 1e-5 * reference.abs().max(), name
        assert torch.equal(out[f"{name}.partial"], out[f"{name}.full"]), name
        assert not result["full_lowvram"] and result["partial_lowvram"], name
        assert 0 < result["cast_layers"] < result["layers"], f"{name}: ComfyUI left some layers offloaded"
        assert result["handle_after_handle_load"] and not result["native_after_handle_load"], name
        assert result["native_after_native_load"] and not result["handle_after_native_load"], name
    assert results["wan"]["latent_format"] == "Wan21" and results["wan"]["shift"] == 5.0
    assert results["sana"]["latent_format"] == "LatentFormat" and results["sana"]["shift"] == 3.0
