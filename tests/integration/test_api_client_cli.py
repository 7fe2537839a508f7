"""`python <pack> run ...` against the real server: outputs downloaded, batches, node errors as exit code 1."""

import os
import subprocess
import sys

from PIL import Image
from tiny_models import SANA_FILES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOW = os.path.join(ROOT, "workflows", "api", "sana_text_to_image.json")
TINY = [f"1.model_name={SANA_FILES['transformer']}", f"2.model_name={SANA_FILES['text_encoder']}",
        f"3.vae_name={SANA_FILES['vae']}", "5.width=64", "5.height=32", "5.resolution_bin=off", "6.steps=2"]


def _run(server, out, *extra):
    args = [sys.executable, ROOT, "run", WORKFLOW, "--server", server.url, "--output", str(out)]
    for override in TINY:
        args += ["--set", override]
    return subprocess.run(args + list(extra), capture_output=True, text=True, timeout=300)


def test_run_downloads_the_image(comfy_server, tmp_path):
    result = _run(comfy_server, tmp_path, "--set", "6.seed=31")
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    assert len(paths) == 1 and Image.open(paths[0]).size == (64, 32)
    assert "2/2" in result.stderr, "progress bar from /ws"


def test_batch_of_prompts(comfy_server, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red bike\n\na blue boat\n")
    result = _run(comfy_server, tmp_path / "out", "--prompts", str(prompts), "--set", "6.seed=32")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 2


def test_node_error_exits_non_zero_with_the_message(comfy_server, tmp_path):
    result = _run(comfy_server, tmp_path, "--set", "5.width=100")
    assert result.returncode == 1
    assert "not a multiple of 32" in result.stderr and "node 5" in result.stderr
