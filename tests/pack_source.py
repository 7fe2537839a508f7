"""Pieces of the pack for the tiny-model builders without importing the pack as a package: the quick start runs
them in ComfyUI's Python, where no `sana_wan` module exists (only the tests register the repository under that
name, in conftest.py)."""

from __future__ import annotations

import ast
import functools
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def constant(path: str, name: str):
    """The literal assigned to `name` at the top of the pack's file `path` (relative to the repository root)."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"{path} assigns no literal {name}")


@functools.cache
def module(path: str):
    """The pack's file `path` imported on its own (a module without relative imports, or a script)."""
    name = "_sana_wan_file_" + path.removesuffix(".py").replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded
