"""The README's quick start in a fresh copy of the ComfyUI under test: `python scripts/quickstart.py --tiny` from a
Python without torch (`-S`: no site-packages) writes the tiny models, starts the server, and every example's tiny
twin runs through the command-line client (`python <pack> run`, also without site-packages: it polls /history) in
under a minute each, saving its outputs."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import av
import pytest
from conftest import _free_port, _require_comfyui
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "workflows", "tiny")
PLAIN_PYTHON = [sys.executable, "-S"]  # the standard library only: no torch, no websocket-client


def _fresh_copy(comfy_path: str, target: str) -> str:
    """ComfyUI's files without what runs left behind (user settings, outputs, custom nodes linked in)."""
    def ignore(folder, names):
        left = {"user", "output", "__pycache__", ".git"} & set(names)
        if os.path.basename(folder) == "custom_nodes":
            left |= {n for n in names if os.path.islink(os.path.join(folder, n)) or os.path.isdir(os.path.join(folder, n))}
        return left

    shutil.copytree(comfy_path, target, symlinks=True, ignore=ignore)
    return target


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    comfy_path, comfy_python = _require_comfyui()
    work = tmp_path_factory.mktemp("quick_start")
    comfyui = _fresh_copy(comfy_path, str(work / "ComfyUI"))
    port, log_path = _free_port(), str(work / "quickstart.log")
    command = [*PLAIN_PYTHON, os.path.join(ROOT, "scripts", "quickstart.py"), "--comfyui", comfyui, "--python",
               comfy_python, "--tiny", "--port", str(port)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url, started = f"http://127.0.0.1:{port}", time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the quick start exited with {process.returncode}:\n{open(log_path).read()[-4000:]}")
            try:
                urllib.request.urlopen(f"{url}/system_stats", timeout=5).read()
                break
            except OSError:
                if time.monotonic() - started > 300:
                    pytest.fail(f"no server after 300 s:\n{open(log_path).read()[-4000:]}")
                time.sleep(1)
        yield url, log_path, time.monotonic() - started
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def test_quick_start_brings_up_the_server_with_the_pack(quick_start):
    _, log_path, seconds = quick_start
    log = open(log_path).read()
    assert "IMPORT FAILED" not in log and "comfyui-sana-wan" in log, log[-4000:]
    for step in ("ComfyUI's Python", "requirements.txt installed into ComfyUI's Python",
                 "tiny demo models and sample inputs written"):
        assert f"] {step}\n" in log, f"the step '{step}' is timed"
    print(f"\nquick start to an answering server: {seconds:.1f} s")


def _png_size(graph: dict, path: str) -> tuple[int, int]:
    """A camera path plot (Wan Camera Preset / Keyframes: 768x432), else the picture's size in the graph."""
    for node in graph.values():
        prefix = os.path.basename(node["inputs"].get("filename_prefix", "\0"))
        if node["class_type"] == "SaveImage" and os.path.basename(path).startswith(prefix):
            if graph[node["inputs"]["images"][0]]["class_type"] in ("WanCameraPreset", "WanCameraKeyframes"):
                return 768, 432
    return next((n["inputs"]["width"], n["inputs"]["height"]) for n in graph.values()
                if n["class_type"] in ("EmptySanaLatent", "ImageScale"))


@pytest.mark.parametrize("twin", sorted(f.removesuffix(".json") for f in os.listdir(TINY)))
def test_every_tiny_twin_runs_through_the_cli(quick_start, twin, tmp_path):
    url = quick_start[0]
    graph = json.load(open(os.path.join(TINY, f"{twin}.json")))
    started = time.monotonic()
    result = subprocess.run([*PLAIN_PYTHON, ROOT, "run", os.path.join(TINY, f"{twin}.json"), "--server", url,
                             "--output", str(tmp_path), "--timeout", "120"], capture_output=True, text=True, timeout=180)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    assert paths and all(p.startswith(str(tmp_path / "tiny")) and os.path.getsize(p) > 0 for p in paths), paths
    for path in paths:
        if path.endswith(".png"):
            assert Image.open(path).size == _png_size(graph, path), path
        else:
            with av.open(io.BytesIO(open(path, "rb").read())) as container:
                assert len(list(container.decode(container.streams.video[0]))) == 9, path
    assert seconds < 60, f"{twin} took {seconds:.1f} s"
    print(f"\n{twin}: {seconds:.1f} s, {len(paths)} file(s)")
