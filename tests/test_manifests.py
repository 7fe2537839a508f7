"""tests/manifests/ is what scripts/write_manifests.py derives from the real configs, so the files cannot drift."""

import importlib.util
import os

from conftest import ROOT


def test_manifests_are_what_the_script_writes():
    spec = importlib.util.spec_from_file_location("write_manifests", os.path.join(ROOT, "scripts", "write_manifests.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.stale(script.render()) == [], "run scripts/write_manifests.py and commit tests/manifests/"
