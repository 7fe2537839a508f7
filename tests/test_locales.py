"""locales/en (served by ComfyUI's /i18n; the frontend's node names, search, tooltips) says what the nodes declare."""

import json
import os

from pack_source import module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_locales_are_in_sync_with_the_nodes(capsys):
    assert module("scripts/write_locales.py").main(["--check"]) == 0, capsys.readouterr().err


def test_every_node_has_its_display_name_and_tooltips():
    import sana_wan

    defs = json.load(open(os.path.join(ROOT, "locales", "en", "nodeDefs.json"), encoding="utf-8"))
    assert set(defs) == set(sana_wan.NODE_CLASS_MAPPINGS)
    assert defs["SanaSampler"]["display_name"] == sana_wan.NODE_DISPLAY_NAME_MAPPINGS["SanaSampler"]
    assert defs["WanSampler"]["inputs"]["shift"]["tooltip"]


def test_messages_hold_no_vue_i18n_syntax():
    """The frontend compiles each message with vue-i18n, which reads { } as placeholders, @ as a link to another
    message and | as plural forms: a tooltip with one of them would show garbled or fail."""
    def strings(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    for file in ("nodeDefs.json", "main.json"):
        content = json.load(open(os.path.join(ROOT, "locales", "en", file), encoding="utf-8"))
        assert not [s for s in strings(content) if set(s) & set("{}@|")], file
