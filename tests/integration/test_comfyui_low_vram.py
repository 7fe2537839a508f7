"""Partial loading by ComfyUI's own ModelPatcher: tiny Wan and Sana transformers, plain and with fp8 weight storage
(a ComfyUI scaled fp8 file kept in fp8), loaded through the pack's handles in a real ComfyUI's Python.

`ModelPatcher.load(device, lowvram_model_memory=a third of the model)` leaves most layers on the offload device; their
forward must equal the full load's exactly (on the CPU the same cast-on-call path runs, minus the copy), weight
patches must reach the offloaded layers through ComfyUI's low-VRAM patch functions, and a partial load onto the meta
device (standing in for a GPU) must run every op on that one device.
"""

import json
import os

import pytest
import torch
from conftest import _require_comfyui, run_comfy_job
from safetensors.torch import load_file, save_file

from tiny_sana import tiny_sana_transformer
from tiny_wan import tiny_wan_transformer, write_wan_layouts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_transformer_files(tmp_path) -> dict:
    """name -> [family, file, weight storage]: Wan and Sana, plain and kept in fp8 (Wan from a scaled fp8 file)."""
    wan = write_wan_layouts(tiny_wan_transformer(seed=5), str(tmp_path / "wan"))
    sana = str(tmp_path / "sana.safetensors")
    save_file(tiny_sana_transformer("qk_norm", seed=6).state_dict(), sana)
    models = {"wan": ["wan", wan["diffusers_single"], None],
              "wan_fp8_scaled": ["wan", wan["comfy_fp8_scaled"], "fp8_e4m3fn"],
              "sana": ["sana", sana, None], "sana_fp8": ["sana", sana, "fp8_e4m3fn"]}
    return models


def test_comfyui_partial_loads_equal_full_loads(tmp_path):
    _require_comfyui()  # before writing models nobody would use
    models = tiny_transformer_files(tmp_path)
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


def test_comfyui_dynamic_vram_stages_and_patches_the_packs_layers(tmp_path):
    comfy_path, comfy_python = _require_comfyui()
    with open(os.path.join(comfy_path, "comfy", "model_patcher.py")) as f:
        has_dynamic = "class ModelPatcherDynamic" in f.read()
    if not has_dynamic:
        pytest.skip("this ComfyUI (before 0.33) has no dynamic VRAM patcher")
    models = tiny_transformer_files(tmp_path)
    run_comfy_job("dynamic_vram_in_comfyui.py", {"models": models, "output": str(tmp_path / "out.json")}, tmp_path)
    for name, result in json.load(open(tmp_path / "out.json")).items():
        assert result["castable"] > 0 and result["slotted"] > 0, (name, result)
        assert result["unplaced"] == [], name  # every castable layer staged in virtual VRAM or force-loaded
        # every patch attached where ComfyUI looks for it (the patched layers are all staged: see the script)
        assert result["unpatched"] == [] and result["patched_slotted"] == result["patch_keys"] > 0, name
        # each staged layer is fetched through comfy.ops once for the call, and its patch applied then
        assert result["fetches"] == result["slotted"] and result["patch_calls"] == result["patch_keys"], name
        assert result["meta_mixes"] == [] and result["output"] == "meta", name
