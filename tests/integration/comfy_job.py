"""The start of every script that runs inside a real ComfyUI's Python for an integration test: read the job file,
make ComfyUI importable with `--cpu`, and import the pack as `sana_wan` (as the unit tests do)."""

import importlib.util
import json
import os
import sys


def start() -> dict:
    """The job (JSON file named by argv[1]) after ComfyUI and the pack are importable."""
    with open(sys.argv[1]) as f:
        job = json.load(f)
    sys.path.insert(0, job["comfyui"])
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    spec = importlib.util.spec_from_file_location("sana_wan", os.path.join(job["pack"], "__init__.py"),
                                                  submodule_search_locations=[job["pack"]])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["sana_wan"] = pack
    spec.loader.exec_module(pack)
    return job
