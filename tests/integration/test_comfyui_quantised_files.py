"""ComfyUI 0.33's quantised-layer files (`<layer>.weight_scale` + `comfy_quant`, or `_quantization_metadata`), made by
ComfyUI's own `convert_old_quants` from the pack's tiny scaled fp8 Wan and UMT5 files, load equal to those files
(which the unit tests check against the dequantised reference); formats the pack cannot compute are refused by name.
"""

import json
import subprocess

import pytest
from conftest import _require_comfyui, run_comfy_job

from tiny_umt5 import tiny_umt5, tokenizer_from_spm, train_spm_bytes, write_umt5_layouts
from tiny_wan import tiny_wan_transformer, write_wan_layouts


def test_comfyui_quantised_layer_files_load_as_their_scaled_fp8_source(tmp_path):
    comfy_path, comfy_python = _require_comfyui()
    has_format = subprocess.run([comfy_python, "-c", "import comfy.utils as u; print(hasattr(u, 'convert_old_quants'))"],
                                cwd=comfy_path, capture_output=True, text=True).stdout.strip()
    if has_format != "True":
        pytest.skip("this ComfyUI (before 0.33) has no quantised-layer format to write such files with")
    wan = write_wan_layouts(tiny_wan_transformer(seed=7), str(tmp_path / "wan"))
    spm = train_spm_bytes()
    tokenizer = tokenizer_from_spm(spm)
    umt5 = write_umt5_layouts(tiny_umt5(len(tokenizer), seed=1), tokenizer, spm, str(tmp_path / "umt5"))
    job = {"models": {"wan": ["wan", wan["comfy_fp8_scaled"]], "umt5": ["umt5", umt5["comfy_fp8_scaled"]]},
           "folder": str(tmp_path), "output": str(tmp_path / "out.json")}
    run_comfy_job("quantised_files_in_comfyui.py", job, tmp_path)
    results = json.load(open(tmp_path / "out.json"))
    for name, result in results.items():
        assert result["layers"] > 0, name
        assert result["equal"] and all(result["equal"].values()), (name, result["equal"])
        assert "nvfp4" in result["nvfp4_error"] and "fp8_scaled" in result["nvfp4_error"], name
