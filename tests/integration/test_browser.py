"""The editor in a real browser: tests/browser/editor.spec.mjs against the ComfyUI server of conftest.py.

Needs node, the browser test's node_modules (`cd tests/browser && npm ci`) and Debian's Chromium at
/usr/bin/chromium (`apt-get install -y chromium`); skipped with the reason when one is missing. Nothing is installed
from here. Screenshots land in tests/browser/artifacts/ (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import PACK_NAME

BROWSER_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "browser")
SPEC = os.path.join(BROWSER_TESTS, "editor.spec.mjs")
ARTIFACTS = os.path.join(BROWSER_TESTS, "artifacts")
CHROMIUM = "/usr/bin/chromium"


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not os.path.isdir(os.path.join(BROWSER_TESTS, "node_modules", "playwright-core")):
        return "playwright-core is not installed: run `npm ci` in tests/browser"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing: `apt-get install -y chromium`"
    return None


MISSING = _missing()


@pytest.mark.skipif(MISSING is not None, reason=f"the browser test needs what is not here: {MISSING}")
def test_editor_loads_workflows_and_extension_works(comfy_server, capsys):
    env = {**os.environ, "COMFY_URL": comfy_server.url, "PACK_NAME": PACK_NAME, "ARTIFACTS_DIR": ARTIFACTS}
    result = subprocess.run(["node", SPEC], cwd=BROWSER_TESTS, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "PASSED" in result.stdout, f"{output}\n--- server log ---\n{comfy_server.log_tail()}"
    print(output)  # the spec's checks, shown with -rP
    screenshots = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("screenshot: ")]
    assert screenshots and all(os.path.isfile(path) for path in screenshots), output
    with capsys.disabled():
        print("\nbrowser screenshots:\n  " + "\n  ".join(screenshots))
