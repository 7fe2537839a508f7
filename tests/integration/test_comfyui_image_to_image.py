"""The image- and video-to-video and VACE example workflows in a real ComfyUI, fed by its own Load Video / Load Image
from the input folder (the sample files the conftest writes); bad frame counts and sizes are node errors."""

import io
import json
import os

import av
from conftest import INPUT_SIZE, use_tiny_wan_files
from PIL import Image
from sample_media import INPUT_IMAGE, INPUT_VIDEO
from tiny_models import SANA_FILES, SANA_SPRINT_FILE, WAN_FILES
from tiny_wan_vace import WAN_VACE_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WIDTH, HEIGHT, FRAMES = INPUT_SIZE


def _workflow(name: str) -> dict:
    return json.load(open(os.path.join(ROOT, "workflows", "api", name)))


def _output(server, item) -> bytes:
    return server.get(f"/view?filename={item['filename']}&subfolder={item['subfolder']}&type=output")


def _wan_graph(length: int) -> dict:
    graph = _workflow("wan_video_to_video.json")
    use_tiny_wan_files(graph)
    graph["5"]["inputs"]["file"] = INPUT_VIDEO
    graph["7"]["inputs"]["length"] = length
    graph["8"]["inputs"].update(width=WIDTH, height=HEIGHT)
    graph["10"]["inputs"].update(steps=2, denoise=0.5)
    return graph


def test_wan_video_to_video_workflow_makes_a_video_of_the_input_length(comfy_server):
    entry = comfy_server.run_prompt(_wan_graph(FRAMES))
    (item,) = entry["outputs"]["13"]["images"]
    with av.open(io.BytesIO(_output(comfy_server, item))) as container:
        frames = list(container.decode(container.streams.video[0]))
    assert len(frames) == FRAMES and (frames[0].width, frames[0].height) == (WIDTH, HEIGHT)


def test_wan_video_to_video_with_a_bad_frame_count_is_a_node_error(comfy_server):
    _, messages = comfy_server.run_prompt_ws(_wan_graph(FRAMES - 1))
    errors = [m["data"] for m in messages if m["type"] == "execution_error"]
    assert errors and errors[0]["node_type"] == "WanVAEEncode" and "4n+1" in errors[0]["exception_message"]


def _sana_graph(workflow: str, transformer: str, width: int, height: int) -> dict:
    graph = _workflow(workflow)
    graph["1"]["inputs"]["model_name"] = transformer
    graph["2"]["inputs"]["model_name"] = SANA_FILES["text_encoder"]
    graph["3"]["inputs"]["vae_name"] = SANA_FILES["vae"]
    graph["5"]["inputs"]["image"] = INPUT_IMAGE
    graph["6"]["inputs"].update(width=width, height=height)
    if graph["8"]["class_type"] == "SanaSampler":
        graph["8"]["inputs"]["steps"] = 3
    return graph


SANA_WORKFLOWS = [("sana_image_to_image.json", SANA_FILES["transformer"]),
                  ("sana_sprint_image_to_image.json", SANA_SPRINT_FILE)]


def test_sana_image_to_image_workflows_save_an_image_of_the_input_size(comfy_server):
    for workflow, transformer in SANA_WORKFLOWS:
        entry = comfy_server.run_prompt(_sana_graph(workflow, transformer, 96, 64))
        (item,) = entry["outputs"]["10"]["images"]
        assert Image.open(io.BytesIO(_output(comfy_server, item))).size == (96, 64), workflow


def test_sana_image_to_image_with_a_bad_size_is_a_node_error(comfy_server):
    _, messages = comfy_server.run_prompt_ws(_sana_graph(*SANA_WORKFLOWS[1], 80, 64))
    errors = [m["data"] for m in messages if m["type"] == "execution_error"]
    assert errors and errors[0]["node_type"] == "DCAEEncode" and "multiples of 32" in errors[0]["exception_message"]


def _vace_graph(control_frames: int) -> dict:
    graph = _workflow("wan_vace_control.json")
    graph["1"]["inputs"]["model_name"] = WAN_VACE_FILE
    graph["2"]["inputs"]["model_name"] = WAN_FILES["text_encoder"]
    graph["3"]["inputs"]["vae_name"] = WAN_FILES["vae"]
    graph["5"]["inputs"]["file"] = INPUT_VIDEO
    graph["7"]["inputs"]["length"] = control_frames
    graph["8"]["inputs"].update(width=WIDTH, height=HEIGHT)
    graph["9"]["inputs"]["image"] = INPUT_IMAGE
    graph["10"]["inputs"].update(width=WIDTH, height=HEIGHT, length=FRAMES)
    graph["11"]["inputs"]["steps"] = 2
    return graph


def test_wan_vace_workflow_trims_the_reference_frames(comfy_server):
    """With a reference image the sampled latent has one more latent frame (4 more video frames); core Trim Video
    Latent, fed the node's trim_latent, drops it."""
    entry = comfy_server.run_prompt(_vace_graph(FRAMES))
    (item,) = entry["outputs"]["15"]["images"]
    with av.open(io.BytesIO(_output(comfy_server, item))) as container:
        frames = list(container.decode(container.streams.video[0]))
    assert len(frames) == FRAMES and (frames[0].width, frames[0].height) == (WIDTH, HEIGHT)


def test_wan_vace_with_a_short_control_video_is_a_node_error(comfy_server):
    _, messages = comfy_server.run_prompt_ws(_vace_graph(FRAMES - 4))
    errors = [m["data"] for m in messages if m["type"] == "execution_error"]
    assert errors and errors[0]["node_type"] == "WanVACEConditioning"
    assert f"control_video has {FRAMES - 4} frames but length is {FRAMES}" in errors[0]["exception_message"]
