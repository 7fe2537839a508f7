"""The example workflows use this pack's nodes as they are declared: names, types, links, widget values."""

import json
import os
import re

import pytest
from pack_source import module
from PIL import Image

import sana_wan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = os.path.join(ROOT, "workflows")
EXAMPLES = os.path.join(ROOT, "example_workflows")
VIRTUAL = {"Note", "MarkdownNote"}  # the editor's own nodes: not sent to the server
# ComfyUI core nodes the examples use: (required inputs, optional inputs, outputs), as ComfyUI 0.3.64 declares them.
CORE = {
    "SaveImage": ({"images": "IMAGE", "filename_prefix": "STRING"}, {}, ()),
    "CreateVideo": ({"images": "IMAGE", "fps": "FLOAT"}, {"audio": "AUDIO"}, ("VIDEO",)),
    "SaveVideo": ({"video": "VIDEO", "filename_prefix": "STRING", "format": "COMBO", "codec": "COMBO"}, {}, ()),
    "LoadImage": ({"image": "COMBO"}, {}, ("IMAGE", "MASK")),
    "LoadVideo": ({"file": "COMBO"}, {}, ("VIDEO",)),
    "GetVideoComponents": ({"video": "VIDEO"}, {}, ("IMAGE", "AUDIO", "FLOAT")),
    "ImageFromBatch": ({"image": "IMAGE", "batch_index": "INT", "length": "INT"}, {}, ("IMAGE",)),
    "ImageScale": ({"image": "IMAGE", "upscale_method": "COMBO", "width": "INT", "height": "INT", "crop": "COMBO"}, {},
                   ("IMAGE",)),
    "TrimVideoLatent": ({"samples": "LATENT", "trim_amount": "INT"}, {}, ("LATENT",)),
    "ModelSamplingSD3": ({"model": "MODEL", "shift": "FLOAT"}, {}, ("MODEL",)),
    "KSampler": ({"model": "MODEL", "seed": "INT", "steps": "INT", "cfg": "FLOAT", "sampler_name": "COMBO",
                  "scheduler": "COMBO", "positive": "CONDITIONING", "negative": "CONDITIONING",
                  "latent_image": "LATENT", "denoise": "FLOAT"}, {}, ("LATENT",)),
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Widgets only the editor has: the upload button of the file loaders stores its kind after the file name.
UI_ONLY_WIDGETS = {"LoadImage": ["upload"], "LoadVideo": ["upload"]}


def _declared(class_type):
    """(required, optional, outputs) with input name -> type ('COMBO' for lists of choices)."""
    if class_type in CORE:
        return CORE[class_type]
    cls = sana_wan.NODE_CLASS_MAPPINGS[class_type]
    spec = cls.INPUT_TYPES()

    def types(section):
        return {name: (v[0] if isinstance(v[0], str) else "COMBO") for name, v in spec.get(section, {}).items()}

    return types("required"), types("optional"), cls.RETURN_TYPES


def _examples() -> dict[str, str]:
    """API twin name -> the UI example (example_workflows/<title>.json) that names it in extra.sana_wan.api_twin."""
    examples = {}
    for file in sorted(os.listdir(EXAMPLES)):
        if file.endswith(".json"):
            with open(os.path.join(EXAMPLES, file), encoding="utf-8") as f:
                examples[json.load(f)["extra"]["sana_wan"]["api_twin"]] = os.path.join(EXAMPLES, file)
    return examples


def _api_names():
    return sorted(f.removesuffix(".json") for f in os.listdir(os.path.join(WORKFLOWS, "api")))


def test_every_example_has_an_api_twin_and_the_reverse():
    assert _api_names(), "no example workflows"
    assert sorted(_examples()) == _api_names()


@pytest.mark.parametrize("name", _api_names())
def test_example_has_a_title_a_description_and_a_thumbnail(name):
    """What ComfyUI's template browser shows: the file name as the title, `<title>.jpg` beside it; the description
    is the graph's note (and extra.sana_wan.description)."""
    path = _examples()[name]
    title = os.path.basename(path).removesuffix(".json")
    assert re.fullmatch(r"[A-Z][A-Za-z0-9 .-]+", title), "a readable title, safe in a URL and a shell"
    workflow = json.load(open(path, encoding="utf-8"))
    description = workflow["extra"]["sana_wan"]["description"]
    assert "\n" not in description and 20 < len(description) <= 160, "one line"
    notes = [n for n in workflow["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1 and notes[0]["widgets_values"][0].startswith(f"{title}\n{description}\n")
    with Image.open(os.path.join(EXAMPLES, f"{title}.jpg")) as thumbnail:  # ComfyUI 0.3.64 / 0.33 ask for .jpg
        assert thumbnail.format == "JPEG" and thumbnail.size == (512, 512)


@pytest.mark.parametrize("name", _api_names())
def test_api_workflow_matches_node_declarations(name):
    graph = json.load(open(os.path.join(WORKFLOWS, "api", f"{name}.json")))
    for node_id, node in graph.items():
        required, optional, _ = _declared(node["class_type"])
        inputs = {**required, **optional}
        assert set(required) <= set(node["inputs"]) <= set(inputs), f"node {node_id} {node['class_type']}"
        for input_name, value in node["inputs"].items():
            if isinstance(value, list):
                source = graph[value[0]]
                outputs = _declared(source["class_type"])[2]
                assert outputs[value[1]] == inputs[input_name], f"link into {node_id}.{input_name}"
            elif inputs[input_name] == "COMBO" and node["class_type"] not in CORE:
                spec = sana_wan.NODE_CLASS_MAPPINGS[node["class_type"]].INPUT_TYPES()
                options = {**spec["required"], **spec.get("optional", {})}[input_name][0]
                if options:
                    assert value in options, f"{node_id}.{input_name}={value!r} not in {options}"


@pytest.mark.parametrize("name", _api_names())
def test_ui_workflow_equals_its_api_twin(name):
    ui = json.load(open(_examples()[name]))
    api = json.load(open(os.path.join(WORKFLOWS, "api", f"{name}.json")))
    links = {link[0]: link for link in ui["links"]}
    nodes = [n for n in ui["nodes"] if n["type"] not in VIRTUAL]
    assert {str(n["id"]): n["type"] for n in nodes} == {k: v["class_type"] for k, v in api.items()}
    for node in nodes:
        twin = api[str(node["id"])]["inputs"]
        for slot in node["inputs"]:
            link = links[slot["link"]]
            assert twin[slot["name"]] == [str(link[1]), link[2]], f"UI link into {node['id']}.{slot['name']}"
        required, optional, _ = _declared(node["type"])
        # Every widget keeps its slot in widgets_values, also when a link feeds it; optional widgets too.
        widget_names = [k for k, t in {**required, **optional}.items() if t in WIDGET_TYPES]
        widget_names += UI_ONLY_WIDGETS.get(node["type"], [])
        values = list(node["widgets_values"])
        if "seed" in widget_names:  # the UI stores 'control after generate' right after the seed
            values.pop(widget_names.index("seed") + 1)
        assert len(values) == len(widget_names), f"widgets of node {node['id']} {node['type']}"
        for name, value in zip(widget_names, values):
            if name in twin and not isinstance(twin[name], list):
                assert value == twin[name], f"widget {name} of node {node['id']} {node['type']}"


def test_tiny_twins_are_the_api_workflows_at_tiny_size():
    """workflows/tiny/ is what `python scripts/tiny_demo.py --twins` writes from workflows/api/ (run it after editing
    an example): every real file name replaced by the quick start's tiny one, small sizes, outputs under tiny/."""
    tiny_demo = module("scripts/tiny_demo.py")
    expected = tiny_demo.twins()
    assert sorted(expected) == sorted(f.removesuffix(".json") for f in os.listdir(os.path.join(WORKFLOWS, "tiny")))
    for name, graph in expected.items():
        assert json.load(open(os.path.join(WORKFLOWS, "tiny", f"{name}.json"))) == graph, name
        real_names = set(tiny_demo.tiny_names())
        assert not [v for n in graph.values() for v in n["inputs"].values() if isinstance(v, str) and v in real_names]
