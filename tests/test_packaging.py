"""The pack's metadata: pyproject.toml (what the Comfy registry installs from) declares what requirements.txt does,
and follows the registry's rules as ComfyUI itself reads them (comfy_config/config_parser.py)."""

import os
import re
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _requirements() -> list[str]:
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [line for line in lines if line]


def test_pyproject_dependencies_equal_requirements_txt():
    assert _pyproject()["project"]["dependencies"] == _requirements()


def test_name_follows_the_registry_rules():
    name = _pyproject()["project"]["name"]
    # < 100 characters, letters / digits / - _ . only, no two special characters in a row, starts with a letter.
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*", name), name
    assert "comfyui" not in name.lower(), "the registry advises against 'ComfyUI' in the name"
    assert re.fullmatch(r"\d+\.\d+\.\d+", _pyproject()["project"]["version"]), "X.Y.Z"


def test_tool_comfy_section():
    comfy = _pyproject()["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and "Icon" in comfy
    assert comfy["requires-comfyui"] == ">=0.3.64", "the oldest ComfyUI the integration suite runs on"
    # ComfyUI serves a pyproject `web` folder under the project name as well as WEB_DIRECTORY under the folder name:
    # with both, a pack folder named unlike the project loads its frontend extension twice.
    assert "web" not in comfy


def test_classifiers_are_ones_comfyui_accepts():
    classifiers = _pyproject()["project"]["classifiers"]
    systems = [c.removeprefix("Operating System :: ") for c in classifiers if c.startswith("Operating System :: ")]
    accelerators = [c.removeprefix("Environment :: ") for c in classifiers if c.startswith("Environment ::")]
    assert systems and all(s.startswith(("Microsoft", "POSIX", "MacOS", "OS Independent")) for s in systems)
    assert set(accelerators) <= {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                                 "GPU :: Apple Metal"}
