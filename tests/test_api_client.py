"""The queue client's workflow handling: API-format only, overrides by node id or title, clear errors."""

import json
import os

import pytest

from sana_wan.api_client.workflow import apply_overrides, load_workflow, parse_value, set_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANA_API = os.path.join(ROOT, "workflows", "api", "sana_text_to_image.json")


def test_overrides_by_id_and_by_title_with_json_values():
    graph = load_workflow(SANA_API)
    changed = apply_overrides(graph, ["6.steps=8", "SanaSampler.cfg=2.5", "4.prompt=a red bike",
                                      '4.negative_prompt="42"'])
    assert changed["6"]["inputs"]["steps"] == 8 and changed["6"]["inputs"]["cfg"] == 2.5
    assert changed["4"]["inputs"]["prompt"] == "a red bike" and changed["4"]["inputs"]["negative_prompt"] == "42"
    assert graph["6"]["inputs"]["steps"] == 20, "the loaded graph is not modified"
    assert set_input(graph, "4.prompt", "true")["4"]["inputs"]["prompt"] == "true"


@pytest.mark.parametrize("override, message", [
    ("6.steps", "node.input=value"),
    ("99.steps=1", "no node with id or title '99'"),
    ("6.stepz=1", "has no input 'stepz'"),
])
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(load_workflow(SANA_API), [override])


def test_ui_format_is_refused_with_the_remedy():
    with pytest.raises(ValueError, match="API-format twin"):
        load_workflow(os.path.join(ROOT, "workflows", "sana_text_to_image.json"))


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("false") is False and parse_value("a cat") == "a cat"
    assert parse_value(json.dumps([1, 2])) == [1, 2]
