"""The pack under ComfyUI's queue: progress over /ws, the cache, interrupts and run-time errors."""

import json
import os

from conftest import use_tiny_wan_files
from tiny_models import SANA_FILES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sana_graph(seed: int, steps: int = 4) -> dict:
    graph = json.load(open(os.path.join(ROOT, "workflows", "api", "sana_text_to_image.json")))
    graph["1"]["inputs"]["model_name"] = SANA_FILES["transformer"]
    graph["2"]["inputs"]["model_name"] = SANA_FILES["text_encoder"]
    graph["3"]["inputs"]["vae_name"] = SANA_FILES["vae"]
    graph["5"]["inputs"].update(width=64, height=64, resolution_bin="off")
    graph["6"]["inputs"].update(seed=seed, steps=steps)
    return graph


def _wan_graph(seed: int, steps: int) -> dict:
    graph = json.load(open(os.path.join(ROOT, "workflows", "api", "wan_text_to_video.json")))
    use_tiny_wan_files(graph)
    graph["5"]["inputs"].update(width=32, height=32, length=5)
    graph["6"]["inputs"].update(seed=seed, steps=steps)
    for node in ("9", "10"):
        del graph[node]
    return graph


def _of(messages, kind):
    return [m["data"] for m in messages if m["type"] == kind]


def test_progress_per_step_and_success(comfy_server):
    _, messages = comfy_server.run_prompt_ws(_sana_graph(seed=11, steps=4))
    sampler_progress = [(p["value"], p["max"]) for p in _of(messages, "progress") if p["node"] == "6"]
    assert sampler_progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [e["node"] for e in _of(messages, "executed")] == ["8"]
    assert _of(messages, "execution_success")


def test_changing_only_the_seed_reruns_the_sampler_not_the_text_encoder(comfy_server):
    comfy_server.run_prompt_ws(_sana_graph(seed=12))
    _, messages = comfy_server.run_prompt_ws(_sana_graph(seed=13))
    cached = set(_of(messages, "execution_cached")[0]["nodes"])
    executed = {e["node"] for e in _of(messages, "executing") if e["node"] is not None}
    assert {"1", "2", "3", "4", "5"} <= cached
    assert {"6", "7", "8"} <= executed and not executed & {"2", "4"}


def test_interrupt_during_sampling_then_the_next_prompt_runs(comfy_server):
    def interrupt_at_first_step(message, server):
        if message["type"] == "progress" and message["data"]["node"] == "6":
            server.post_json("/interrupt", {})

    _, messages = comfy_server.run_prompt_ws(_wan_graph(seed=1, steps=1000), on_message=interrupt_at_first_step)
    assert _of(messages, "execution_interrupted"), [m["type"] for m in messages]
    steps_done = max(p["value"] for p in _of(messages, "progress") if p["node"] == "6")
    assert steps_done < 1000
    _, messages = comfy_server.run_prompt_ws(_wan_graph(seed=2, steps=2))
    assert _of(messages, "execution_success")


def test_bad_value_at_run_time_is_a_node_error_and_the_server_keeps_serving(comfy_server):
    graph = _sana_graph(seed=14)
    graph["6"]["inputs"]["cfg"] = float("nan")
    _, messages = comfy_server.run_prompt_ws(graph)
    errors = _of(messages, "execution_error")
    assert errors and errors[0]["node_id"] == "6" and errors[0]["exception_type"] == "ValueError"
    assert "cfg must be a finite number" in errors[0]["exception_message"]
    _, messages = comfy_server.run_prompt_ws(_sana_graph(seed=15))
    assert _of(messages, "execution_success")
