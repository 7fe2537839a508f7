"""The example workflows under ComfyUI's memory-management flags, with POST /free between prompts.

The harness runs on the CPU, where ComfyUI disables VRAM states, so this proves the flags and the model
unloading they trigger leave the pack's models working, not the VRAM savings (those need a GPU).
"""

from test_comfyui_queue import _of, _sana_graph, _wan_graph


def test_workflows_run_then_free_then_run_again(comfy_server_memory_mode):
    server = comfy_server_memory_mode
    for graph in (_sana_graph(seed=41), _wan_graph(seed=42, steps=2)):
        _, messages = server.run_prompt_ws(graph)
        assert _of(messages, "execution_success"), [m["type"] for m in messages]
    status, _ = server.post_json("/free", {"unload_models": True, "free_memory": True})
    assert status == 200
    for graph in (_sana_graph(seed=43), _wan_graph(seed=44, steps=2)):
        _, messages = server.run_prompt_ws(graph)
        assert _of(messages, "execution_success"), [m["type"] for m in messages]
