"""What the editor gets from ComfyUI about the pack: the example workflows as templates with their thumbnails, and
locales/en through /i18n."""

import json
import os
import urllib.parse

from conftest import PACK_NAME

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "example_workflows")


def test_examples_are_served_as_templates_with_thumbnails(comfy_server):
    titles = sorted(f.removesuffix(".json") for f in os.listdir(EXAMPLES) if f.endswith(".json"))
    assert sorted(comfy_server.get_json("/api/workflow_templates")[PACK_NAME]) == titles
    for title in titles:
        route = f"/api/workflow_templates/{PACK_NAME}/{urllib.parse.quote(title)}"
        assert json.loads(comfy_server.get(f"{route}.json")) == json.load(open(os.path.join(EXAMPLES, f"{title}.json")))
        assert comfy_server.get(f"{route}.jpg")[:3] == b"\xff\xd8\xff", f"{title}.jpg"


def test_locales_reach_the_frontend(comfy_server):
    english = comfy_server.get_json("/i18n")["en"]
    defs = json.load(open(os.path.join(ROOT, "locales", "en", "nodeDefs.json"), encoding="utf-8"))
    assert {name: english["nodeDefs"][name] for name in defs} == defs
    assert english["templateWorkflows"]["category"][PACK_NAME] == "Sana + Wan2.1"
