"""The Sana example workflow in a real ComfyUI: the pack imports, its nodes are listed, the API graph runs."""

import io
import json
import os

from PIL import Image
from conftest import PACK_NAME
from tiny_models import SANA_FILES, SANA_SPRINT_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SANA_NODES = {"SanaTransformerLoader", "SanaTextEncoderLoader", "SanaTextEncode", "EmptySanaLatent", "SanaSampler",
              "DCAELoader", "DCAEDecode", "DCAEEncode"}


def _example_graph(seed: int) -> dict:
    graph = json.load(open(os.path.join(ROOT, "workflows", "api", "sana_text_to_image.json")))
    graph["1"]["inputs"]["model_name"] = SANA_FILES["transformer"]
    graph["2"]["inputs"]["model_name"] = SANA_FILES["text_encoder"]
    graph["3"]["inputs"]["vae_name"] = SANA_FILES["vae"]
    graph["5"]["inputs"].update(width=96, height=64, resolution_bin="off")
    graph["6"]["inputs"].update(seed=seed, steps=4)
    return graph


def test_pack_imports_and_lists_its_nodes(comfy_server):
    failed = [line for line in open(comfy_server.log_path) if "IMPORT FAILED" in line and PACK_NAME in line]
    assert not failed, comfy_server.log_tail()
    info = comfy_server.get_json("/object_info")
    assert SANA_NODES <= set(info)
    loader = info["SanaTransformerLoader"]
    assert SANA_FILES["transformer"] in loader["input"]["required"]["model_name"][0]
    assert info["SanaSampler"]["output"] == ["LATENT"] and info["SanaSampler"]["category"] == "Sana"


def test_object_info_lists_every_node_as_declared(comfy_server):
    import sana_wan

    info = comfy_server.get_json("/object_info")
    for name, cls in sana_wan.NODE_CLASS_MAPPINGS.items():
        served = info[name]
        assert served["category"] == cls.CATEGORY and served["output"] == list(cls.RETURN_TYPES), name
        assert served["display_name"] == sana_wan.NODE_DISPLAY_NAME_MAPPINGS[name]
        for section, inputs in cls.INPUT_TYPES().items():
            for input_name, spec in inputs.items():
                served_spec = served["input"][section][input_name]
                if isinstance(spec[0], str):
                    assert served_spec[0] == spec[0], f"{name}.{input_name}"
                tooltip = spec[1].get("tooltip") if len(spec) > 1 else None
                if tooltip:
                    assert served_spec[1]["tooltip"] == tooltip, f"{name}.{input_name}"


def test_example_workflow_produces_the_image(comfy_server):
    entry = comfy_server.run_prompt(_example_graph(seed=7))
    images = entry["outputs"]["8"]["images"]
    assert len(images) == 1
    png = comfy_server.get(f"/view?filename={images[0]['filename']}&subfolder={images[0]['subfolder']}&type=output")
    image = Image.open(io.BytesIO(png))
    assert image.size == (96, 64)
    assert max(image.convert("L").getextrema()) > min(image.convert("L").getextrema())


def test_bad_input_is_a_node_error_and_the_server_keeps_serving(comfy_server):
    graph = _example_graph(seed=8)
    graph["5"]["inputs"]["width"] = 100
    status, answer = comfy_server.post_json("/prompt", {"prompt": graph})
    assert status == 400 and "5" in answer["node_errors"], answer
    assert comfy_server.get_json("/system_stats")


def test_sprint_workflow_produces_the_image(comfy_server):
    graph = json.load(open(os.path.join(ROOT, "workflows", "api", "sana_sprint_text_to_image.json")))
    graph["1"]["inputs"]["model_name"] = SANA_SPRINT_FILE
    graph["2"]["inputs"]["model_name"] = SANA_FILES["text_encoder"]
    graph["3"]["inputs"]["vae_name"] = SANA_FILES["vae"]
    graph["5"]["inputs"].update(width=64, height=96, resolution_bin="off")
    entry = comfy_server.run_prompt(graph)
    item = entry["outputs"]["8"]["images"][0]
    png = comfy_server.get(f"/view?filename={item['filename']}&subfolder={item['subfolder']}&type=output")
    assert Image.open(io.BytesIO(png)).size == (64, 96)
