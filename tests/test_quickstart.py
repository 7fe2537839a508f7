"""scripts/quickstart.py prepares a ComfyUI checkout: pack linked, requirements installed, tiny models placed."""

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", os.path.join(ROOT, "scripts", "quickstart.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_setup_links_the_pack_and_places_loadable_models(tmp_path, capsys):
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "custom_nodes").mkdir(parents=True)
    (comfyui / "main.py").write_text("")
    assert _quickstart().main(["--comfyui", str(comfyui), "--python", sys.executable, "--tiny", "--no-start"]) == 0
    assert os.path.realpath(comfyui / "custom_nodes" / "comfyui-sana-wan") == ROOT
    from tiny_models import SANA_FILES, SANA_SPRINT_FILE, WAN_FILES

    from sana_wan.loaders.sana_transformer import load_sana_transformer
    from sana_wan.loaders.wan_transformer import load_wan_transformer
    models = comfyui / "models"
    assert load_sana_transformer(str(models / "diffusion_models" / SANA_SPRINT_FILE))[1].is_sprint
    assert load_wan_transformer(str(models / "diffusion_models" / WAN_FILES["transformer"]))[0] is not None
    for folder, name in (("text_encoders", SANA_FILES["text_encoder"]), ("vae", WAN_FILES["vae"])):
        assert (models / folder / name).is_file()
    assert sorted(os.listdir(models)) == ["diffusion_models", "text_encoders", "vae"], "nothing else in models/"
    assert "tiny demo models" in capsys.readouterr().out


def test_refuses_a_folder_that_is_not_comfyui(tmp_path):
    with pytest.raises(SystemExit, match="not a ComfyUI checkout"):
        _quickstart().main(["--comfyui", str(tmp_path), "--no-start"])


def test_without_models_it_lists_the_real_files_and_where_they_go(tmp_path, capsys):
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "custom_nodes").mkdir(parents=True)
    (comfyui / "main.py").write_text("")
    assert _quickstart().main(["--comfyui", str(comfyui), "--python", sys.executable, "--no-start"]) == 0
    out = capsys.readouterr().out
    models = comfyui / "models"
    assert f"wan: put in {models / 'diffusion_models'}: Comfy-Org/Wan_2.1_ComfyUI_repackaged/split_files/" in out
    assert f"sana: put in {models / 'vae' / 'dc-ae-f32c32-sana-1.1-diffusers'}: " in out
    assert not (models / "diffusion_models").exists(), "nothing downloaded or written"


def test_download_passes_allow_unverified_on(tmp_path, monkeypatch):
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "custom_nodes").mkdir(parents=True)
    (comfyui / "main.py").write_text("")
    quickstart = _quickstart()
    calls = []
    monkeypatch.setattr(quickstart.fetch_models, "fetch", lambda *args: calls.append(args) or [])
    for flags, allowed in (([], False), (["--allow-unverified"], True)):
        quickstart.main(["--comfyui", str(comfyui), "--python", sys.executable, "--download", "wan", "--no-start",
                         *flags])
        assert calls.pop()[2:] == (str(comfyui / "models"), False, allowed)
