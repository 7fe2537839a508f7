"""Nothing lost, nothing overwritten, nothing hangs, through a real ComfyUI's HTTP API: save prefixes with control
characters are refused and leave existing files as they were, a save killed half-way leaves no output under an
output's name, VALIDATE_INPUTS reports every bad input under its own name with the widget bounds kept, and Cancel
stops a long VAE decode within one frame while the decode reports its progress."""

import os
import re
import signal
import subprocess
import threading
import time

import pytest
from conftest import _running_server
from tiny_models import WAN_FILES

EXISTING = b"\x89PNG\r\n\x1a\n" + bytes(64)


def _save_graph(prefix, images=None):
    graph = {"frames": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 3,
                                                               "color": 0}},
             "save": {"class_type": "SaveWanVideo", "inputs": {"images": ["frames", 0], "fps": 16.0,
                                                               "filename_prefix": prefix, "frames_per_video": 0,
                                                               "crf": 19}}}
    if images is not None:
        graph.update(images)
        graph["save"]["inputs"]["images"] = ["noisy", 0]
    return graph


def _files(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def _errors(answer, node):
    return [error["details"] for error in answer["node_errors"][node]["errors"]]


@pytest.mark.parametrize("prefix", ["probe/sana_00001_.png\u0000", "probe/justname\u0000", "probe/two\nlines"])
def test_a_prefix_with_control_characters_is_refused_and_the_existing_file_kept(comfy_server, prefix):
    probe = os.path.join(comfy_server.output_dir, "probe")
    os.makedirs(probe, exist_ok=True)
    with open(os.path.join(probe, "sana_00001_.png"), "wb") as f:
        f.write(EXISTING)
    status, answer = comfy_server.post_json("/prompt", {"prompt": _save_graph(prefix)})
    assert status == 400, answer
    (details,) = _errors(answer, "save")
    assert details.startswith("filename_prefix - filename_prefix ") and "control characters" in details
    assert _files(probe) == {"sana_00001_.png": EXISTING}


def test_a_linked_prefix_with_a_nul_fails_the_run_and_writes_nothing(comfy_server):
    probe = os.path.join(comfy_server.output_dir, "linked")
    os.makedirs(probe, exist_ok=True)
    with open(os.path.join(probe, "v_00001_.mp4"), "wb") as f:
        f.write(EXISTING)
    graph = _save_graph("unused")
    graph["prefix"] = {"class_type": "PrimitiveString", "inputs": {"value": "linked/v_00001_.mp4\u0000"}}
    graph["save"]["inputs"]["filename_prefix"] = ["prefix", 0]
    _, messages = comfy_server.run_prompt_ws(graph, timeout=120)
    (error,) = [m["data"] for m in messages if m["type"] == "execution_error"]
    assert error["node_id"] == "save" and error["exception_message"].startswith("filename_prefix ")
    assert _files(probe) == {"v_00001_.mp4": EXISTING}


def test_every_bad_latent_input_is_reported_under_its_own_name(comfy_server):
    def refused(node, inputs):
        graph = {"latent": {"class_type": node, "inputs": inputs},
                 "save": {"class_type": "SaveLatent", "inputs": {"samples": ["latent", 0],
                                                                 "filename_prefix": "refused/latent"}}}
        status, answer = comfy_server.post_json("/prompt", {"prompt": graph})
        assert status == 400, answer
        details = _errors(answer, "latent")
        assert len({d.split(" - ", 1)[1] for d in details}) == 1, "one message, shown under each checked input"
        return details[0].split(" - ", 1)[1]

    assert refused("EmptyWanLatentVideo", {"width": 832, "height": 250, "length": 10, "batch_size": 1}) == (
        "height 250 is not a multiple of 16; use 240 or 256. length 10 is not 4n+1 frames; use 9 or 13.")
    assert refused("EmptyWanLatentVideo", {"width": 16384, "height": 16384, "length": 100001, "batch_size": 1}) == (
        "width 16384 is above the maximum 4096. height 16384 is above the maximum 4096. "
        "length 100001 is above the maximum 1025.")
    assert refused("EmptySanaLatent", {"width": 16384, "height": 16384, "batch_size": 1, "resolution_bin": "off"}) == (
        "width 16384 is above the maximum 8192. height 16384 is above the maximum 8192.")
    assert not os.path.exists(os.path.join(comfy_server.output_dir, "refused")), "nothing ran"


@pytest.fixture
def doomed_server(tmp_path_factory, comfy_models_dir):
    """A server of its own: this test kills it."""
    with _running_server(tmp_path_factory, comfy_models_dir) as server:
        yield server


def test_a_save_killed_half_way_leaves_no_output_under_an_output_name(doomed_server):
    """kill -9 while Save Wan Video encodes (lossless noise, slow to encode): the folder holds only a hidden `.tmp`,
    which ComfyUI's own numbering skips."""
    noisy = {"noisy": {"class_type": "ImageAddNoise", "inputs": {"image": ["frames", 0], "seed": 0, "strength": 1.0}}}
    graph = _save_graph("killed/v", noisy)
    graph["frames"]["inputs"].update(width=640, height=480, batch_size=120)
    graph["save"]["inputs"]["crf"] = 0
    status, answer = doomed_server.post_json("/prompt", {"prompt": graph})
    assert status == 200, answer
    folder = os.path.join(doomed_server.output_dir, "killed")
    deadline = time.time() + 120
    while not (os.path.isdir(folder) and any(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))):
        assert time.time() < deadline, doomed_server.log_tail()
        time.sleep(0.005)
    doomed_server.process.send_signal(signal.SIGKILL)
    doomed_server.process.wait(timeout=30)
    names = os.listdir(folder)
    assert not [n for n in names if re.fullmatch(r"v_\d{5}_\.mp4", n)], names
    assert names and all(n.startswith(".v_") and n.endswith(".tmp") for n in names)
    counter = subprocess.run(
        [os.environ["COMFYUI_PYTHON"], "-c", "import sys, folder_paths; "
         "print(folder_paths.get_save_image_path('killed/v', sys.argv[1])[2])", doomed_server.output_dir],
        cwd=os.environ["COMFYUI_PATH"], capture_output=True, text=True, check=True).stdout
    assert counter.strip() == "1", "ComfyUI numbers the next save from 1: the temporary file is no output"


def test_cancel_stops_a_long_wan_vae_decode_within_seconds_and_the_decode_shows_progress(comfy_server):
    """1025 frames at 128x128 through the tiny VAE take minutes on the CPU (93 s after Cancel before the fix);
    /interrupt 3 s into the decode must end the prompt within a few seconds (one latent frame: 0.2 s), the decode
    reports its frames over /ws meanwhile, and the next decode runs."""
    graph = {"vae": {"class_type": "WanVAELoader", "inputs": {"vae_name": WAN_FILES["vae"], "dtype": "fp32"}},
             "latent": {"class_type": "EmptyWanLatentVideo", "inputs": {"width": 128, "height": 128, "length": 1025,
                                                                        "batch_size": 1}},
             "decode": {"class_type": "WanVAEDecode", "inputs": {"vae": ["vae", 0], "samples": ["latent", 0],
                                                                 "tiling": "auto", "tile_size": 1024,
                                                                 "tile_overlap": 64}},
             "preview": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}}}
    times = {}

    def interrupt_into_the_decode(message, server):
        if message["type"] == "executing" and message["data"]["node"] == "decode" and "timer" not in times:
            def interrupt():
                times["interrupt"] = time.monotonic()
                server.post_json("/interrupt", {})
            times["timer"] = threading.Timer(3.0, interrupt)
            times["timer"].start()
        if message["type"] == "execution_interrupted":
            times["ended"] = time.monotonic()

    _, messages = comfy_server.run_prompt_ws(graph, timeout=900, on_message=interrupt_into_the_decode)
    types = [m["type"] for m in messages]
    assert "execution_interrupted" in types and "execution_success" not in types, types
    latency = times["ended"] - times["interrupt"]
    assert latency < 5, f"the decode went on for {latency:.1f} s after Cancel"
    progress = [m["data"] for m in messages if m["type"] == "progress" and m["data"]["node"] == "decode"]
    assert progress, "the decode reported no progress"
    assert {p["max"] for p in progress} == {257}, "one unit per latent frame"
    values = [p["value"] for p in progress]  # ComfyUI 0.33 throttles progress messages: increasing, not every one
    assert values == sorted(set(values)) and 1 <= values[0] and values[-1] < 257, values
    graph["latent"]["inputs"]["length"] = 5
    _, messages = comfy_server.run_prompt_ws(graph, timeout=120)
    assert "execution_success" in [m["type"] for m in messages], "the next decode runs"
