"""Loads tiny Wan and Sana transformers through the pack's handles inside a real ComfyUI's Python and runs them fully
and partially loaded by ComfyUI's own ModelPatcher, for test_comfyui_low_vram.py.

Per model: a full load (load_models_gpu, --cpu); `ModelPatcher.load(cpu, lowvram_model_memory=a third)`, which leaves
two thirds of the layers on the offload device to be cast on call; both again with a weight patch on every stored
layer (ComfyUI's low-VRAM patch functions on the offloaded ones); then a partial load onto the meta device standing
in for a GPU, where every torch call is checked for tensors on two devices.

usage: COMFYUI_PYTHON low_vram_in_comfyui.py JOB.json
JOB: {"comfyui", "pack", "models": {name: [family "wan" / "sana", file, weight storage or null]}, "output" (prefix)}
"""

import json

from comfy_job import start

job = start()

import comfy.model_patcher  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from comfy_forwards import DeviceMixes, forward, weight_patches  # noqa: E402

from sana_wan import comfy_bridge as bridge  # noqa: E402
from sana_wan.loaders.cast_layers import SCALE, to_storage  # noqa: E402
from sana_wan.loaders.sana_transformer import load_sana_transformer  # noqa: E402
from sana_wan.loaders.storage import STORAGE_DTYPES, stored_layers  # noqa: E402
from sana_wan.loaders.wan_transformer import load_wan_transformer  # noqa: E402

CPU, META = torch.device("cpu"), torch.device("meta")


def exactly_patched(load, path, storage, stored_model):
    """The float32 model whose stored layers hold the stored (rounded) weights plus their patch, in float32: what a
    patch on stored weights computes with no rounding back to the storage dtype."""
    model, _ = load(path, torch.float32, None)
    layers = stored_layers(model)
    for key, (_, (diff,)) in weight_patches(stored_model).items():
        layer = layers[key.removeprefix("module.").removesuffix(".weight")]
        stored = to_storage(layer.weight.detach(), STORAGE_DTYPES[storage]).to(torch.float32)
        layer.weight = torch.nn.Parameter(stored + diff, requires_grad=False)
    return model


def partially(patcher, device=CPU):
    patcher.detach()
    patcher.load(device, lowvram_model_memory=patcher.model_size() // 3)
    return patcher.model.module


def run(name, family, path, storage):
    load = load_wan_transformer if family == "wan" else load_sana_transformer
    model, _ = load(path, torch.float32, STORAGE_DTYPES[storage] if storage else None)
    handle = bridge.ModelHandle(model, "diffusion")
    patcher = handle.patcher
    assert isinstance(patcher, comfy.model_patcher.ModelPatcher), "not running on ComfyUI's ModelPatcher"
    tensors[f"{name}.full"] = forward(family, handle.load())
    full_lowvram = patcher.model.model_lowvram
    module = partially(patcher)
    cast = [n for n, m in module.named_modules() if getattr(m, "comfy_cast_weights", False)]
    tensors[f"{name}.partial"] = forward(family, module)
    patched = handle.clone()
    patched.patcher.add_patches(weight_patches(model), 1.0)
    tensors[f"{name}.patched_full"] = forward(family, patched.load())
    tensors[f"{name}.patched_partial"] = forward(family, partially(patched.patcher))
    patched.patcher.detach()
    tensors[f"{name}.again"] = forward(family, handle.load())
    if storage:
        tensors[f"{name}.patched_exact"] = forward(family, exactly_patched(load, path, storage, model))
    mixes = DeviceMixes()
    module = partially(patcher, META)
    with mixes:
        on_meta = forward(family, module, META)
    return {
        "full_load_lowvram": full_lowvram, "partial_lowvram": patcher.model.model_lowvram, "cast_layers": len(cast),
        "layers": sum(1 for m in module.modules() if m._parameters), "meta_mixes": mixes.calls,
        "meta_output": str(on_meta.device), "scaled_layers": sum(1 for m in module.modules() if SCALE in m._buffers),
    }
results, tensors = {}, {}
with torch.inference_mode():  # as ComfyUI's executor runs every node
    for name, (family, path, storage) in job["models"].items():
        results[name] = run(name, family, path, storage)
save_file({k: v.contiguous() for k, v in tensors.items()}, job["output"] + ".safetensors")
json.dump(results, open(job["output"] + ".json", "w"))
