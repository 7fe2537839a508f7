"""locales/en/ from the nodes' own declarations: `python scripts/write_locales.py` (in a Python with the pack's
requirements and torch, e.g. ComfyUI's or the tests' .venv); `--check` only compares (tests/test_locales.py runs it).

ComfyUI serves custom nodes' `locales/<language>/` through /i18n and the frontend merges them into its messages:
`nodeDefs.json` gives each node's display name (what the node search matches), description, and its inputs' and
outputs' names and tooltips; a translation is a copy of it in another language folder. `main.json` names the pack's
group in the template browser (keyed by the pack's folder name: a git clone's or the registry's).

nodeDefs.json is written from NODE_DISPLAY_NAME_MAPPINGS and each class's INPUT_TYPES, DESCRIPTION, RETURN_TYPES,
RETURN_NAMES and OUTPUT_TOOLTIPS, so it never says what the nodes do not.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCALES = os.path.join(PACK, "locales", "en")
DISPLAY_NAME = "Sana + Wan2.1"
FOLDER_NAMES = ("comfyui-sana-wan", "sana-wan")  # a clone as the README names it; the registry's node id


def _pack():
    """The pack imported as a package under its folder-independent name (as the tests do)."""
    if "sana_wan" not in sys.modules:
        spec = importlib.util.spec_from_file_location("sana_wan", os.path.join(PACK, "__init__.py"),
                                                      submodule_search_locations=[PACK])
        module = importlib.util.module_from_spec(spec)
        sys.modules["sana_wan"] = module
        spec.loader.exec_module(module)
    return sys.modules["sana_wan"]


def node_defs(pack) -> dict:
    defs = {}
    for name, cls in sorted(pack.NODE_CLASS_MAPPINGS.items()):
        entry = {"display_name": pack.NODE_DISPLAY_NAME_MAPPINGS.get(name, name)}
        if getattr(cls, "DESCRIPTION", None):
            entry["description"] = cls.DESCRIPTION
        inputs = {}
        for section in ("required", "optional"):
            for input_name, spec in cls.INPUT_TYPES().get(section, {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                inputs[input_name] = {"name": input_name, **({"tooltip": options["tooltip"]}
                                                             if options.get("tooltip") else {})}
        if inputs:
            entry["inputs"] = inputs
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        tooltips = getattr(cls, "OUTPUT_TOOLTIPS", None) or ()
        outputs = {}
        for index, output_name in enumerate(names):
            tooltip = tooltips[index] if index < len(tooltips) else None
            outputs[str(index)] = {"name": output_name, **({"tooltip": tooltip} if tooltip else {})}
        if outputs:
            entry["outputs"] = outputs
        defs[name] = entry
    return defs


def files() -> dict[str, dict]:
    """File name in locales/en -> its content."""
    return {
        "nodeDefs.json": node_defs(_pack()),
        "main.json": {"templateWorkflows": {"category": {name: DISPLAY_NAME for name in FOLDER_NAMES}}},
    }


def _text(content: dict) -> str:
    return json.dumps(content, indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when locales/en differs from the nodes")
    args = parser.parse_args(argv)
    stale = []
    for file, content in files().items():
        path = os.path.join(LOCALES, file)
        current = open(path, encoding="utf-8").read() if os.path.isfile(path) else None
        if current == _text(content):
            continue
        stale.append(file)
        if not args.check:
            os.makedirs(LOCALES, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(_text(content))
    if args.check and stale:
        print(f"locales/en/{', '.join(stale)} out of date: run python scripts/write_locales.py", file=sys.stderr)
        return 1
    print(f"locales/en: {', '.join(stale) or 'nothing'} {'differs' if args.check else 'written'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
