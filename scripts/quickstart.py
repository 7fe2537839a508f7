"""Bring up ComfyUI with this pack: `python scripts/quickstart.py [--tiny] [--comfyui PATH] [--port 8188]`.

1. ComfyUI: `--comfyui PATH` or $COMFYUI_PATH, else a clone of the pinned release next to the pack (needs network).
2. Links the pack into ComfyUI/custom_nodes and installs its requirements into ComfyUI's Python
   (`--python`, $COMFYUI_PYTHON, else this interpreter).
3. Models: `--tiny` writes tiny random demo models of every kind into ComfyUI/models (no download; for trying the
   graphs and the API, not for pictures); `--download sana wan ...` fetches the real files listed in
   scripts/models.json from the Hugging Face Hub, checked by size and hash (`--record` writes those into the
   manifest; `--allow-unverified` takes files that neither the manifest nor the server gives a hash for); with
   neither, prints which files to put where.
4. Starts the server on loopback (`--no-start` stops after step 3).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fetch_models  # noqa: E402  (a sibling script, not a package)

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_NAME = "comfyui-sana-wan"
COMFYUI_REPO = "https://github.com/comfyanonymous/ComfyUI"
COMFYUI_RELEASE = "v0.3.64"  # the release the integration tests run against


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="an existing ComfyUI checkout")
    parser.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON", sys.executable),
                        help="ComfyUI's Python interpreter")
    parser.add_argument("--tiny", action="store_true", help="write tiny demo models instead of listing real ones")
    parser.add_argument("--download", nargs="+", metavar="SET", default=[],
                        help="download the real models of these sets from scripts/models.json (sana, sana_sprint, wan)")
    parser.add_argument("--record", action="store_true",
                        help="with --download: write each file's size and SHA-256 into scripts/models.json")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="with --download: take files that neither scripts/models.json nor the server (a mirror "
                             "in HF_ENDPOINT) gives a hash for, unchecked")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--no-start", action="store_true", help="prepare everything, do not start the server")
    return parser.parse_args(argv)


def comfyui_checkout(path: str | None) -> str:
    if path:
        if not os.path.isfile(os.path.join(path, "main.py")):
            raise SystemExit(f"'{path}' is not a ComfyUI checkout (no main.py).")
        return os.path.abspath(path)
    target = os.path.join(os.path.dirname(PACK), "ComfyUI")
    if not os.path.isfile(os.path.join(target, "main.py")):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", COMFYUI_RELEASE, COMFYUI_REPO, target], check=True)
    return target


def link_pack(comfyui: str) -> str:
    link = os.path.join(comfyui, "custom_nodes", PACK_NAME)
    if os.path.realpath(link) != PACK:
        if os.path.lexists(link):
            raise SystemExit(f"{link} exists and is not this pack; move it away first.")
        os.symlink(PACK, link)
    return link


def write_tiny_models(models_dir: str) -> list[str]:
    """Tiny random Sana, Sana-Sprint and Wan models under the names the example workflows' loaders list."""
    sys.path.insert(0, os.path.join(PACK, "tests"))
    from tiny_models import (SANA_FILES, SANA_SPRINT_FILE, WAN_FILES, place_in_comfy_folders, tiny_sana_set,
                             tiny_wan_set, write_sana_files, write_wan_files)

    with tempfile.TemporaryDirectory() as layouts:  # every layout is written; only one of each is placed
        place_in_comfy_folders(write_sana_files(tiny_sana_set(), layouts), SANA_FILES, models_dir)
        sprint = write_sana_files(tiny_sana_set("sprint"), os.path.join(layouts, "sprint"))["transformer"]
        shutil.copy(sprint, os.path.join(models_dir, "diffusion_models", SANA_SPRINT_FILE))
        place_in_comfy_folders(write_wan_files(tiny_wan_set(), layouts), WAN_FILES, models_dir)
    return [*SANA_FILES.values(), SANA_SPRINT_FILE, *WAN_FILES.values()]


def main(argv=None) -> int:
    args = _parse(argv)
    comfyui = comfyui_checkout(args.comfyui)
    print(f"pack linked at {link_pack(comfyui)}")
    subprocess.run([args.python, "-m", "pip", "install", "-q", "-r", os.path.join(PACK, "requirements.txt")],
                   check=True)
    models = os.path.join(comfyui, "models")
    if args.tiny:
        print("tiny demo models:", ", ".join(write_tiny_models(models)))
        print("in the example workflows, pick them in the loaders (names with 'tiny').")
    if args.download:
        manifest = fetch_models.load_manifest()
        paths = fetch_models.fetch(manifest, args.download, models, args.record, args.allow_unverified)
        print("real models:", ", ".join(paths))
        if args.record:
            fetch_models.save_manifest(manifest)
    if not (args.tiny or args.download):
        for name, entries in fetch_models.load_manifest()["sets"].items():
            for entry in entries:
                files = ", ".join(f"{entry['repo']}/{f['path']}" for f in entry["files"])
                print(f"{name}: put in {os.path.join(models, entry['target'])}: {files}")
    if args.no_start:
        return 0
    command = [args.python, "main.py", "--listen", "127.0.0.1", "--port", str(args.port)]
    if subprocess.run([args.python, "-c", "import torch, sys; sys.exit(not torch.cuda.is_available())"]).returncode:
        command.append("--cpu")
    print(f"starting ComfyUI at http://127.0.0.1:{args.port}")
    return subprocess.run(command, cwd=comfyui).returncode


if __name__ == "__main__":
    sys.exit(main())
