"""Runs the Wan LoRA Loader inside a real ComfyUI's Python and saves the transformer's outputs, for
test_comfyui_lora.py: the patches come from `comfy.lora.load_lora`, ComfyUI's ModelPatcher holds them and
`load_models_gpu` applies and restores them, as in a ComfyUI server.

usage: COMFYUI_PYTHON lora_in_comfyui.py JOB.json
JOB: {"comfyui", "pack", "model" (a Wan transformer file or folder), "loras" (folder), "inputs" (safetensors of the
forward's keyword tensors), "runs" ([name, [[lora file name, strength], ...]] in order), "output"}
"""

from comfy_job import start

job = start()

import comfy.model_patcher  # noqa: E402
import folder_paths  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from sana_wan import comfy_bridge as bridge  # noqa: E402
from sana_wan.loaders.wan_transformer import load_wan_transformer  # noqa: E402
from sana_wan.nodes.lora import WanLoraLoader  # noqa: E402

folder_paths.add_model_folder_path("loras", job["loras"])
base = bridge.ModelHandle(load_wan_transformer(job["model"], torch.float32)[0], "diffusion", family="wan")
assert isinstance(base.patcher, comfy.model_patcher.ModelPatcher), "not running on ComfyUI's ModelPatcher"
inputs = load_file(job["inputs"])
outputs = {}
for name, chain in job["runs"]:
    handle = base
    for lora_name, strength in chain:
        handle = WanLoraLoader().load(handle, lora_name, strength)[0]
    with torch.no_grad():
        outputs[name] = handle.load()(**inputs, return_dict=False)[0].cpu().contiguous()
save_file(outputs, job["output"])
