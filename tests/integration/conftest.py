"""A real ComfyUI server with this pack, for the integration tests.

Runs when COMFYUI_PATH (the ComfyUI checkout) and COMFYUI_PYTHON (its interpreter, with this pack's requirements
installed) are set, e.g. by ../shared/tools/comfyui-harness.sh; otherwise every test here is skipped with the
reason. The server listens on loopback only, loads only this pack, and reads tiny models from a temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACK_NAME = "comfyui-sana-wan"
REAL_SIZE_WAN_VAE = "wan_2.1_vae_random_real_size.safetensors"
REAL_SIZE_CLIP_VISION = "clip_vision_h_random_real_size.safetensors"
# ComfyUI's input folder for Load Image / Load Video: sample_media's INPUT_IMAGE and INPUT_VIDEO (width, height, frames).
INPUT_FOLDER, INPUT_SIZE = "input", (48, 32, 9)
VRAM_FLAGS = {"--lowvram", "--novram", "--highvram", "--gpu-only"}
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, url: str, output_dir: str, log_path: str):
        self.url, self.output_dir, self.log_path = url, output_dir, log_path

    def get(self, route: str):
        with urllib.request.urlopen(self.url + route, timeout=30) as response:
            return response.read()

    def get_json(self, route: str):
        return json.loads(self.get(route))

    def post_json(self, route: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + route, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run_prompt(self, graph: dict, timeout: float = 300) -> dict:
        """Queue an API-format graph and wait for its history entry."""
        status, answer = self.post_json("/prompt", {"prompt": graph})
        assert status == 200, answer
        prompt_id = answer["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] != "success" or not entry["status"]["completed"]:
                    pytest.fail(f"prompt failed: {entry['status']['messages']}\n{self.log_tail()}")
                return entry
            time.sleep(0.5)
        pytest.fail(f"prompt did not finish in {timeout} s\n{self.log_tail()}")

    def run_prompt_ws(self, graph: dict, timeout: float = 300, on_message=None) -> tuple[str, list[dict]]:
        """Queue a graph while listening on /ws; returns (prompt_id, the JSON messages of that prompt) once it ended.

        `on_message(message, server)` runs for every message, e.g. to interrupt the run.
        """
        import websocket

        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws{self.url[4:]}/ws?clientId={client_id}", timeout=timeout)
        try:
            status, answer = self.post_json("/prompt", {"prompt": graph, "client_id": client_id})
            assert status == 200, answer
            prompt_id, messages = answer["prompt_id"], []
            deadline = time.time() + timeout
            while time.time() < deadline:
                raw = ws.recv()
                if isinstance(raw, bytes):  # preview images
                    continue
                message = json.loads(raw)
                if message.get("data", {}).get("prompt_id") != prompt_id:
                    continue
                messages.append(message)
                if on_message is not None:
                    on_message(message, self)
                if message["type"] in ("execution_error", "execution_interrupted") or (
                        message["type"] == "executing" and message["data"]["node"] is None):
                    return prompt_id, messages
            pytest.fail(f"prompt did not finish in {timeout} s\n{self.log_tail()}")
        finally:
            ws.close()

    def log_tail(self, lines: int = 60) -> str:
        with open(self.log_path) as f:
            return "".join(f.readlines()[-lines:])


def _require_comfyui() -> tuple[str, str]:
    comfy_path, comfy_python = os.environ.get("COMFYUI_PATH"), os.environ.get("COMFYUI_PYTHON")
    if not comfy_path or not comfy_python:
        pytest.skip("COMFYUI_PATH / COMFYUI_PYTHON are not set: no real ComfyUI to run the integration tests in "
                    "(set them up with ../shared/tools/comfyui-harness.sh setup ...).")
    return comfy_path, comfy_python


def use_tiny_wan_files(graph: dict) -> dict:
    """An API graph's Wan loaders pointed at the tiny Wan files the server's model folder holds."""
    from tiny_models import WAN_FILES

    names = {"WanTransformerLoader": ("model_name", "transformer"), "WanTextEncoderLoader": ("model_name", "text_encoder"),
             "WanVAELoader": ("vae_name", "vae")}
    for node in graph.values():
        if node["class_type"] in names:
            name, role = names[node["class_type"]]
            node["inputs"][name] = WAN_FILES[role]
    return graph


def run_comfy_job(script: str, job: dict, folder) -> None:
    """Run one of the `*_in_comfyui.py` scripts in ComfyUI's Python with `job` (plus where ComfyUI and the pack are;
    see comfy_job.py), written to `folder`/job.json; fails the test with the script's output when it fails."""
    comfy_path, comfy_python = _require_comfyui()
    path = os.path.join(str(folder), "job.json")
    with open(path, "w") as f:
        json.dump({"comfyui": comfy_path, "pack": ROOT, **job}, f)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), script)
    done = subprocess.run([comfy_python, script, path], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="session")
def comfy_models_dir(tmp_path_factory):
    _require_comfyui()  # before writing models nobody would use
    from sample_media import write_sample_inputs
    from tiny_clip_vision import real_size_clip_vision_file
    from tiny_models import real_size_wan_vae_file, write_all_in_comfy_folders

    root = str(tmp_path_factory.mktemp("comfy_models"))
    write_all_in_comfy_folders(root, os.path.join(root, INPUT_FOLDER))
    real_size_wan_vae_file(os.path.join(root, "vae", REAL_SIZE_WAN_VAE))
    real_size_clip_vision_file(os.path.join(root, "clip_vision", REAL_SIZE_CLIP_VISION))
    write_sample_inputs(os.path.join(root, INPUT_FOLDER), *INPUT_SIZE)
    _link_example_names(root)
    return root


def _link_example_names(root: str) -> None:
    """Every file the example workflows name, as a link to its tiny counterpart beside it: the folder a user who
    downloaded the models has, so the editor finds each file (ComfyUI 0.33's frontend marks a node whose file is
    missing as having errors)."""
    from pack_source import module

    tiny_demo = module("scripts/tiny_demo.py")
    input_dir = os.path.join(root, INPUT_FOLDER)
    for path in tiny_demo.write_example_inputs(os.path.join(root, "example_inputs")):  # those the tests lack
        if not os.path.exists(os.path.join(input_dir, os.path.basename(path))):
            os.symlink(path, os.path.join(input_dir, os.path.basename(path)))
    for real, tiny in tiny_demo.tiny_names().items():
        for folder, _, files in os.walk(root):
            if tiny in files and not os.path.lexists(os.path.join(folder, real)):
                os.symlink(os.path.join(folder, tiny), os.path.join(folder, real))
        for folder, dirs, _ in os.walk(root):
            if tiny in dirs and not os.path.lexists(os.path.join(folder, real)):
                os.symlink(os.path.join(folder, tiny), os.path.join(folder, real), target_is_directory=True)


@contextlib.contextmanager
def _running_server(tmp_path_factory, models_dir: str, memory_flags: tuple[str, ...] = ()):
    """A ComfyUI process on a free loopback port with only this pack and the tiny models; stopped on exit."""
    comfy_path, comfy_python = _require_comfyui()
    work = tmp_path_factory.mktemp("comfy_run")
    custom_nodes = work / "custom_nodes"
    custom_nodes.mkdir()
    os.symlink(ROOT, custom_nodes / PACK_NAME)
    output = work / "output"
    config = work / "extra_model_paths.yaml"
    config.write_text(
        f"sana_wan_tests:\n  base_path: {models_dir}\n  diffusion_models: diffusion_models\n"
        f"  text_encoders: text_encoders\n  vae: vae\n  controlnet: controlnet\n  loras: loras\n  clip_vision: clip_vision\n"
        f"  custom_nodes: {custom_nodes}\n"
    )
    port = _free_port()
    log_path = str(work / "server.log")
    device = [] if set(memory_flags) & VRAM_FLAGS else ["--cpu"]  # ComfyUI takes no VRAM state with --cpu
    command = [comfy_python, "main.py", *device, "--listen", "127.0.0.1", "--port", str(port),
               "--disable-auto-launch", "--extra-model-paths-config", str(config), "--output-directory", str(output),
               "--input-directory", os.path.join(models_dir, INPUT_FOLDER),
               "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_NAME, "--preview-method", "latent2rgb",
               *memory_flags]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=comfy_path, stdout=log, stderr=subprocess.STDOUT)
    server = ComfyServer(f"http://127.0.0.1:{port}", str(output), log_path)
    server.process = process  # for tests that kill the server mid-run
    try:
        _wait_until_up(server, process)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, comfy_models_dir):
    with _running_server(tmp_path_factory, comfy_models_dir) as server:
        yield server


@pytest.fixture(scope="module", params=[("--disable-smart-memory",), ("--lowvram",), ("--novram",)],
                ids=lambda flags: " ".join(flags))
def comfy_server_memory_mode(request, tmp_path_factory, comfy_models_dir):
    """A server started with one of ComfyUI's memory-management flags (the VRAM states need a CUDA GPU)."""
    if set(request.param) & VRAM_FLAGS and os.environ.get("COMFYUI_PYTHON") and not _comfy_has_cuda():
        pytest.skip(f"{' '.join(request.param)} needs a CUDA GPU: ComfyUI refuses it with --cpu and fails without one.")
    with _running_server(tmp_path_factory, comfy_models_dir, request.param) as server:
        yield server


def _comfy_has_cuda() -> bool:
    probe = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([os.environ["COMFYUI_PYTHON"], "-c", probe]).returncode == 0


def _wait_until_up(server: ComfyServer, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ComfyUI exited with {process.returncode}:\n{server.log_tail()}")
        try:
            server.get("/system_stats")
            return
        except OSError:
            time.sleep(1)
    pytest.fail(f"ComfyUI did not answer in {timeout} s:\n{server.log_tail()}")


# How close the pack's results are to native ComfyUI's on the same files (Wan Sampler vs KSampler, the MODEL adapter
# under KSampler / SamplerCustomAdvanced, LoRA loaders): max |Δ| relative to the largest value. Not bit-equal, for
# float32 order (timestep embedding) and ComfyUI's x0-form Euler step; README quotes the measured figures.
NATIVE_RELATIVE = 2e-5


def assert_native_close(ours, native, relative: float) -> None:
    """`ours` equals a native ComfyUI result within float32 rounding: max |Δ| at most `relative` times the largest
    |value|. The measured figures are printed (pytest -s shows them; the README quotes them)."""
    assert ours.shape == native.shape
    delta, largest = (ours - native).abs().max().item(), native.abs().max().item()
    print(f"native comparison: max|Δ| {delta:.3g}, {delta / largest:.3g} of the largest value {largest:.3g}")
    assert largest > 0 and delta <= relative * largest
