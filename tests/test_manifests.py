"""tests/manifests/ is what scripts/write_manifests.py derives from the real configs, so the files cannot drift."""

import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "write_manifests.py")


def test_manifests_are_what_the_script_writes():
    """Run as its own process: under pytest the name `conftest`, which the script imports, may be another folder's."""
    check = subprocess.run([sys.executable, SCRIPT, "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
