"""Partial loading by ComfyUI's own ModelPatcher: tiny Wan and Sana transformers, plain and with fp8 weight storage
(a ComfyUI scaled fp8 file kept in fp8), loaded through the pack's handles in a real ComfyUI's Python.

`ModelPatcher.load(device, lowvram_model_memory=a third of the model)` leaves most layers on the offload device; their
forward must equal the full load's exactly (on the CPU the same cast-on-call path runs, minus the copy), weight
patches must reach the offloaded layers through ComfyUI's low-VRAM patch functions, and a partial load onto the meta
device (standing in for a GPU) must run every op on that one device.
"""

import json
import os

import torch
from conftest import _require_comfyui, run_comfy_job
from safetensors.torch import load_file, save_file

from tiny_sana import tiny_sana_transformer
from tiny_wan import tiny_wan_transformer, write_wan_layouts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_comfyui_partial_loads_equal_full_loads(tmp_path):
    _require_comfyui()  # before writing models nobody would use
    wan = write_wan_layouts(tiny_wan_transformer(seed=5), str(tmp_path / "wan"))
    sana = str(tmp_path / "sana.safetensors")
    save_file(tiny_sana_transformer("qk_norm", seed=6).state_dict(), sana)
    models = {"wan": ["wan", wan["diffusers_single"], None],
              "wan_fp8_scaled": ["wan", wan["comfy_fp8_scaled"], "fp8_e4m3fn"],
              "sana": ["sana", sana, None], "sana_fp8": ["sana", sana, "fp8_e4m3fn"]}
    job = {"models": models, "output": str(tmp_path / "out")}
    run_comfy_job("low_vram_in_comfyui.py", job, tmp_path)
    out = load_file(str(tmp_path / "out.safetensors"))
    results = json.load(open(tmp_path / "out.json"))
    for name, result in results.items():
        assert not result["full_load_lowvram"] and result["partial_lowvram"], name
        assert 0 < result["cast_layers"] < result["layers"], f"{name}: ComfyUI left some layers offloaded"
        full = out[f"{name}.full"]
        assert torch.equal(out[f"{name}.partial"], full), name
        patched_full, patched_partial = out[f"{name}.patched_full"], out[f"{name}.patched_partial"]
        if name == "sana_fp8":
            # As for ComfyUI's own fp8 models: a patched layer it loads is rounded back to fp8 (stochastically: its
            # random draws differ between versions), one it left offloaded is patched in the compute dtype without
            # rounding. So the partial load is no further from the unrounded patch than the full load is.
            exact = out[f"{name}.patched_exact"]
            assert (patched_partial - exact).abs().max() <= (patched_full - exact).abs().max(), name
        else:  # scaled fp8 layers round back in both cases (set_weight), as the full load does
            assert (patched_partial - patched_full).abs().max() <= 1e-6 * full.abs().max(), name
        assert (patched_full - full).abs().max() > 1e-2 * full.abs().max(), f"{name}: the patches change the output"
        assert torch.equal(out[f"{name}.again"], full), f"{name}: the base weights are restored"
        assert result["meta_mixes"] == [] and result["meta_output"] == "meta", name
    assert results["wan_fp8_scaled"]["scaled_layers"] > 0 and results["wan"]["scaled_layers"] == 0
