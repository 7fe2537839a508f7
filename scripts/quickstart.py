"""Bring up ComfyUI with this pack: `python scripts/quickstart.py --tiny [--comfyui PATH] [--port 8188]`.

Runs from any Python 3 (standard library only); whatever needs torch runs in ComfyUI's own Python.

1. ComfyUI: `--comfyui PATH` or $COMFYUI_PATH, else a clone of the pinned release next to the pack (needs network).
2. ComfyUI's Python: `--python`, $COMFYUI_PYTHON, else the portable build's python_embeded or a venv / .venv in or
   beside the ComfyUI folder, else this interpreter if it has torch.
3. Links the pack into ComfyUI/custom_nodes and installs requirements.txt into ComfyUI's Python.
4. Models: `--tiny` writes tiny random demo models for every example workflow, and the sample input image and
   videos, into ComfyUI's models and input folders (scripts/tiny_demo.py, in ComfyUI's Python; no download; for
   trying the graphs and the API, not for pictures). `--download sana wan ...` fetches the real files listed in
   scripts/models.json from the Hugging Face Hub, checked by size and hash (`--record` writes those into the
   manifest; `--allow-unverified` takes files that neither the manifest nor the server gives a hash for); with
   neither, prints which files to put where.
5. Starts the server on 127.0.0.1:`--port` (`--no-start` stops after step 4); each example's tiny twin then runs with
   `python <pack> run workflows/tiny/NAME.json --server http://127.0.0.1:PORT`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fetch_models  # noqa: E402  (a sibling script, not a package)

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_NAME = "comfyui-sana-wan"
COMFYUI_REPO = "https://github.com/comfyanonymous/ComfyUI"
COMFYUI_RELEASE = "v0.3.64"  # the oldest release the integration tests run against
TINY_TWINS = os.path.join(PACK, "workflows", "tiny")
# Where ComfyUI's Python usually is, relative to the ComfyUI folder: the Windows portable build, then venvs.
PYTHON_CANDIDATES = [("..", "python_embeded", "python.exe"), ("venv", "bin", "python"), (".venv", "bin", "python"),
                     ("..", "venv", "bin", "python"), ("venv", "Scripts", "python.exe"), (".venv", "Scripts", "python.exe")]


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="an existing ComfyUI checkout")
    parser.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON"),
                        help="ComfyUI's Python interpreter (default: found next to ComfyUI, see above)")
    parser.add_argument("--tiny", action="store_true", help="write tiny demo models and sample inputs")
    parser.add_argument("--download", nargs="+", metavar="SET", default=[],
                        help=("download the real models of these sets from scripts/models.json (sana, sana_sprint, wan, "
                              "wan_i2v, wan_flf2v, wan22_t2v_a14b, wan22_i2v_a14b, wan22_ti2v_5b; the Wan2.2 sets "
                              "take the text encoder from the wan set, A14B also its VAE)"))
    parser.add_argument("--record", action="store_true",
                        help="with --download: write each file's size and SHA-256 into scripts/models.json")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="with --download: take files that neither scripts/models.json nor the server (a mirror "
                             "in HF_ENDPOINT) gives a hash for, unchecked")
    parser.add_argument("--port", type=int, default=8188, help="the server's port on 127.0.0.1 (default 8188)")
    parser.add_argument("--no-start", action="store_true", help="prepare everything, do not start the server")
    return parser.parse_args(argv)


class _Steps:
    """Prints each step's time when the next one starts."""

    def __init__(self):
        self.name, self.start = None, 0.0

    def __call__(self, name: str | None) -> None:
        if self.name is not None:
            print(f"[{time.monotonic() - self.start:6.1f} s] {self.name}", flush=True)
        self.name, self.start = name, time.monotonic()


def comfyui_checkout(path: str | None) -> str:
    if path:
        if not os.path.isfile(os.path.join(path, "main.py")):
            raise SystemExit(f"'{path}' is not a ComfyUI checkout (no main.py).")
        return os.path.abspath(path)
    target = os.path.join(os.path.dirname(PACK), "ComfyUI")
    if not os.path.isfile(os.path.join(target, "main.py")):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", COMFYUI_RELEASE, COMFYUI_REPO, target], check=True)
    return target


def comfyui_python(given: str | None, comfyui: str) -> tuple[str, bool]:
    """(ComfyUI's Python, whether torch sees a CUDA device there); SystemExit when that Python has no torch."""
    candidates = [given] if given else [os.path.join(comfyui, *c) for c in PYTHON_CANDIDATES] + [sys.executable]
    probe = "import torch; print(torch.cuda.is_available())"
    for python in candidates:
        if os.path.isfile(python):
            answer = subprocess.run([python, "-c", probe], capture_output=True, text=True)
            if answer.returncode == 0:
                return python, answer.stdout.strip() == "True"
            if given:
                raise SystemExit(f"{python} cannot import torch, so it is not ComfyUI's Python: "
                                 f"{(answer.stderr.strip().splitlines() or ['?'])[-1]}")
    raise SystemExit("ComfyUI's Python not found (none of its usual places has one with torch): pass --python "
                     "<ComfyUI's python> or set COMFYUI_PYTHON.")


def link_pack(comfyui: str) -> str:
    """The pack's place in custom_nodes: where it already is (cloned there), else a link named PACK_NAME."""
    custom_nodes = os.path.join(comfyui, "custom_nodes")
    if os.path.dirname(os.path.realpath(PACK)) == os.path.realpath(custom_nodes):
        return PACK
    link = os.path.join(custom_nodes, PACK_NAME)
    if os.path.realpath(link) != os.path.realpath(PACK):
        if os.path.lexists(link):
            raise SystemExit(f"{link} exists and is not this pack; move it away first.")
        os.symlink(PACK, link)
    return link


def write_tiny_files(python: str, comfyui: str) -> None:
    """Tiny models for every example in ComfyUI/models, sample inputs in ComfyUI/input (in ComfyUI's Python)."""
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    subprocess.run([python, os.path.join(PACK, "scripts", "tiny_demo.py"), "--models", os.path.join(comfyui, "models"),
                    "--input", os.path.join(comfyui, "input")], check=True, env=env)


def _print_real_model_places(models: str) -> None:
    for name, entries in fetch_models.load_manifest()["sets"].items():
        for entry in entries:
            files = ", ".join(f"{entry['repo']}/{f['path']}" for f in entry["files"])
            print(f"{name}: put in {os.path.join(models, entry['target'])}: {files}")


def main(argv=None) -> int:
    args = _parse(argv)
    step = _Steps()
    step("ComfyUI checkout")
    comfyui = comfyui_checkout(args.comfyui)
    step("ComfyUI's Python")
    python, cuda = comfyui_python(args.python, comfyui)
    print(f"ComfyUI {comfyui}, its Python {python} ({'CUDA' if cuda else 'no CUDA: the server runs with --cpu'})")
    step("pack linked")
    print(f"pack linked at {link_pack(comfyui)}")
    step("requirements.txt installed into ComfyUI's Python")
    subprocess.run([python, "-m", "pip", "install", "-q", "-r", os.path.join(PACK, "requirements.txt")], check=True)
    models = os.path.join(comfyui, "models")
    if args.tiny:
        step("tiny demo models and sample inputs written")
        write_tiny_files(python, comfyui)
    if args.download:
        step("real models downloaded")
        manifest = fetch_models.load_manifest()
        paths = fetch_models.fetch(manifest, args.download, models, args.record, args.allow_unverified)
        print("real models:", ", ".join(paths))
        if args.record:
            fetch_models.save_manifest(manifest)
    if not (args.tiny or args.download):
        _print_real_model_places(models)
    step(None)
    if args.no_start:
        return 0
    url = f"http://127.0.0.1:{args.port}"
    print(f"starting ComfyUI at {url}; the examples are among the editor's workflow templates.")
    if args.tiny:
        print("Try a tiny twin from another shell, e.g.:\n"
              f"  python {PACK} run {os.path.join(TINY_TWINS, 'sana_text_to_image.json')} --server {url}")
    command = [python, "main.py", "--listen", "127.0.0.1", "--port", str(args.port)] + ([] if cuda else ["--cpu"])
    try:
        return subprocess.run(command, cwd=comfyui).returncode
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
