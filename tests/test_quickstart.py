"""scripts/quickstart.py prepares a ComfyUI checkout: pack linked, requirements installed, tiny models and inputs
placed for every example's tiny twin; it runs from a Python without torch."""

import json
import os
import subprocess
import sys

import pytest
from pack_source import module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADER_FOLDERS = {"model_name": ("diffusion_models", "text_encoders"), "vae_name": ("vae",),
                  "controlnet_name": ("controlnet",), "lora_name": ("loras",), "image": ("../input",),
                  "file": ("../input",)}


def _quickstart():
    return module("scripts/quickstart.py")


def _fake_comfyui(tmp_path):
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "custom_nodes").mkdir(parents=True)
    (comfyui / "main.py").write_text("")
    return comfyui


def test_tiny_setup_places_every_file_the_tiny_twins_load(tmp_path, capsys):
    comfyui = _fake_comfyui(tmp_path)
    assert _quickstart().main(["--comfyui", str(comfyui), "--python", sys.executable, "--tiny", "--no-start"]) == 0
    assert os.path.realpath(comfyui / "custom_nodes" / "comfyui-sana-wan") == ROOT
    models = comfyui / "models"
    twins = sorted(os.listdir(os.path.join(ROOT, "workflows", "tiny")))
    assert twins == sorted(os.listdir(os.path.join(ROOT, "workflows", "api"))), "a tiny twin for every example"
    for twin in twins:
        for node_id, node in json.load(open(os.path.join(ROOT, "workflows", "tiny", twin))).items():
            for name, value in node["inputs"].items():
                if name in LOADER_FOLDERS and isinstance(value, str):
                    assert any((models / folder / value).exists() for folder in LOADER_FOLDERS[name]), \
                        f"{twin}: node {node_id} loads {value}"
    from sana_wan.loaders.sana_transformer import load_sana_transformer
    from tiny_models import SANA_SPRINT_FILE

    assert load_sana_transformer(str(models / "diffusion_models" / SANA_SPRINT_FILE))[1].is_sprint
    out = capsys.readouterr().out
    assert "] tiny demo models and sample inputs written" in out, "each step is timed"


def test_the_examples_inputs_are_written_too(tmp_path):
    """The UI examples (real models) find their input files in ComfyUI's input folder after --tiny."""
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "tiny_demo.py"), "--models", str(tmp_path / "m"),
                    "--input", str(tmp_path / "in")], check=True, capture_output=True)
    for name in ("input_image.png", "input_video.mp4", "control_video.mp4", "reference.png", "sana_controlnet_hed.png"):
        assert (tmp_path / "in" / name).is_file(), name


def test_runs_without_torch():
    """Plain `python scripts/quickstart.py`: nothing that needs torch is imported in the script's own process."""
    probe = ("import sys; sys.path.insert(0, 'scripts'); import quickstart; "
             "assert not {'torch', 'diffusers', 'sana_wan'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True)


def test_a_python_without_torch_is_refused_with_the_remedy(tmp_path):
    comfyui = _fake_comfyui(tmp_path)
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho 'No module named torch' >&2\nexit 1\n")
    python.chmod(0o755)
    with pytest.raises(SystemExit, match="cannot import torch, so it is not ComfyUI's Python"):
        _quickstart().main(["--comfyui", str(comfyui), "--python", str(python), "--no-start"])


def test_refuses_a_folder_that_is_not_comfyui(tmp_path):
    with pytest.raises(SystemExit, match="not a ComfyUI checkout"):
        _quickstart().main(["--comfyui", str(tmp_path), "--no-start"])


def test_without_models_it_lists_the_real_files_and_where_they_go(tmp_path, capsys):
    comfyui = _fake_comfyui(tmp_path)
    assert _quickstart().main(["--comfyui", str(comfyui), "--python", sys.executable, "--no-start"]) == 0
    out = capsys.readouterr().out
    models = comfyui / "models"
    assert f"wan: put in {models / 'diffusion_models'}: Comfy-Org/Wan_2.1_ComfyUI_repackaged/split_files/" in out
    assert f"sana: put in {models / 'vae' / 'dc-ae-f32c32-sana-1.1-diffusers'}: " in out
    assert not (models / "diffusion_models").exists(), "nothing downloaded or written"


def test_download_passes_allow_unverified_on(tmp_path, monkeypatch):
    comfyui = _fake_comfyui(tmp_path)
    quickstart = _quickstart()
    calls = []
    monkeypatch.setattr(quickstart.fetch_models, "fetch", lambda *args: calls.append(args) or [])
    for flags, allowed in (([], False), (["--allow-unverified"], True)):
        quickstart.main(["--comfyui", str(comfyui), "--python", sys.executable, "--download", "wan", "--no-start",
                         *flags])
        assert calls.pop()[2:] == (str(comfyui / "models"), False, allowed)
