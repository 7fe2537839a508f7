"""The Sana ControlNet example workflow in a real ComfyUI: ControlNet from models/controlnet, control image through
core Load Image from the input folder; a control image of another size is a node error."""

import io
import json
import os

import numpy as np
from PIL import Image
from tiny_models import SANA_FILES
from tiny_sana_controlnet import CONTROL_IMAGE, CONTROL_IMAGE_SIZE, CONTROLNET_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WIDTH, HEIGHT = CONTROL_IMAGE_SIZE


def _graph(strength: float = 1.0, width: int = WIDTH, height: int = HEIGHT) -> dict:
    graph = json.load(open(os.path.join(ROOT, "workflows", "api", "sana_controlnet.json")))
    graph["1"]["inputs"]["model_name"] = SANA_FILES["transformer"]
    graph["2"]["inputs"]["model_name"] = SANA_FILES["text_encoder"]
    graph["3"]["inputs"]["vae_name"] = SANA_FILES["vae"]
    graph["5"]["inputs"].update(width=width, height=height, resolution_bin="off")
    graph["6"]["inputs"].update(seed=3, steps=3)
    graph["9"]["inputs"]["controlnet_name"] = CONTROLNET_FILE
    graph["10"]["inputs"]["image"] = CONTROL_IMAGE
    graph["11"]["inputs"]["strength"] = strength
    return graph


def _image(server, entry) -> np.ndarray:
    (item,) = entry["outputs"]["8"]["images"]
    png = server.get(f"/view?filename={item['filename']}&subfolder={item['subfolder']}&type=output")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_controlnet_workflow_produces_a_controlled_image(comfy_server):
    controlled = _image(comfy_server, comfy_server.run_prompt(_graph(strength=1.0)))
    plain = _image(comfy_server, comfy_server.run_prompt(_graph(strength=0.0)))
    assert controlled.shape == (HEIGHT, WIDTH, 3)
    assert controlled.max() > controlled.min()
    assert np.abs(controlled - plain).max() > 10, "strength 1 must change the image against strength 0"


def test_control_image_of_another_size_is_a_node_error(comfy_server):
    _, messages = comfy_server.run_prompt_ws(_graph(width=64, height=64))
    errors = [m["data"] for m in messages if m["type"] == "execution_error"]
    assert errors and errors[0]["node_type"] == "SanaSampler", messages
    assert f"control image is {WIDTH}x{HEIGHT} but the latent is 64x64" in errors[0]["exception_message"]
    assert comfy_server.get_json("/system_stats")
