"""Test setup: the repository root is imported as the package `sana_wan`, as ComfyUI imports the pack folder."""

import importlib.util
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFESTS = os.path.join(ROOT, "tests", "manifests")


def _import_pack():
    if "sana_wan" in sys.modules:
        return sys.modules["sana_wan"]
    spec = importlib.util.spec_from_file_location("sana_wan", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules["sana_wan"] = module
    spec.loader.exec_module(module)
    return module


_import_pack()
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def manifests_dir():
    """Real checkpoint layouts (key -> [shape, dtype]), written by scripts/write_manifests.py."""
    return MANIFESTS
