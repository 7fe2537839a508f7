"""Drives ComfyUI 0.33's dynamic VRAM patcher (ModelPatcherDynamic) over the pack's tiny Wan and Sana transformers,
with LoRA-style weight patches, on the meta device standing in for a GPU, for test_comfyui_low_vram.py.

comfy-aimdo's native library (virtual VRAM, host buffers) only loads with CUDA: its three entry points are replaced by
stand-ins that allocate nothing (a slot per layer, never resident), and pinned memory is off. Everything else is
ComfyUI's own: `ModelPatcherDynamic.load` (`_load_list(for_dynamic=True)`, `setup_param`, `LowVramPatch` as
`weight_lowvram_function`), and per call `comfy.ops.cast_bias_weight` -> `cast_modules_with_vbar` ->
`resolve_cast_module_with_vbar`, reached through the pack's fetch (one step meta cannot take is made by hand: see
`load_list_on_meta`). Checked: the load runs; each castable layer gets
a slot or is force-loaded; every patched weight gets its patch function and each call of a slotted patched layer
applies it; every op of the forward runs on the one device.

usage: COMFYUI_PYTHON dynamic_vram_in_comfyui.py JOB.json
JOB: {"comfyui", "pack", "models": {name: [family "wan" / "sana", file, weight storage or null]}, "output" (.json)}
"""

import json

from comfy_job import start

job = start()

import comfy.cli_args  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher as mp  # noqa: E402
import comfy.ops  # noqa: E402
import comfy_aimdo.host_buffer  # noqa: E402
import comfy_aimdo.model_vbar  # noqa: E402
import torch  # noqa: E402
from comfy_forwards import DeviceMixes, forward, weight_patches  # noqa: E402

from sana_wan import comfy_bridge as bridge  # noqa: E402
from sana_wan.loaders.sana_transformer import load_sana_transformer  # noqa: E402
from sana_wan.loaders.storage import STORAGE_DTYPES  # noqa: E402
from sana_wan.loaders.wan_transformer import load_wan_transformer  # noqa: E402

META = torch.device("meta")


class HostBuffer:  # comfy_aimdo.host_buffer.HostBuffer: pinned host memory (CUDA)
    def __init__(self, *args, **kwargs):
        pass


class VBar:  # comfy_aimdo.model_vbar.ModelVBAR: a model's virtual VRAM (CUDA); slots are never resident here
    def __init__(self):
        self.slots = 0

    def prioritize(self):
        pass

    def alloc(self, size):
        self.slots += 1
        return (self, self.slots, size)

    def loaded_size(self):
        return 0


comfy_aimdo.host_buffer.HostBuffer = HostBuffer
comfy_aimdo.model_vbar.vbar_fault = lambda slot: None
comfy_aimdo.model_vbar.vbar_signature_compare = lambda signature, previous: False
comfy_aimdo.model_vbar.vbar_unpin = lambda slot: None
comfy.cli_args.args.disable_pinned_memory = True
vbar = VBar()
mp.ModelPatcherDynamic._vbar_get = lambda self, create=False: vbar
mp.CoreModelPatcher = mp.ModelPatcherDynamic  # what ComfyUI's main.py does when dynamic VRAM is on

calls = {"cast_bias_weight": 0, "patch": 0}
cast_bias_weight, patch_call = comfy.ops.cast_bias_weight, mp.LowVramPatch.__call__


def counted_cast(*args, **kwargs):
    calls["cast_bias_weight"] += 1
    return cast_bias_weight(*args, **kwargs)


def counted_patch(self, weight):
    calls["patch"] += 1
    return patch_call(self, weight)


comfy.ops.cast_bias_weight, mp.LowVramPatch.__call__ = counted_cast, counted_patch
load_list = mp.ModelPatcher._load_list


def load_list_on_meta(self, for_dynamic=False, default_device=None):
    """`_load_list` moves the parameters of modules with children to the device with `param.data = ...`, which
    torch refuses from the CPU to meta (not to a GPU): the same move, as new parameters."""
    if default_device is not None and default_device.type == "meta":
        for module in self.model.modules():
            own = dict(module.named_parameters(recurse=False))
            if own and len(own) != len(list(module.parameters())):
                for name, param in own.items():
                    module._parameters[name] = torch.nn.Parameter(param.to(default_device), requires_grad=False)
        default_device = None
    return load_list(self, for_dynamic=for_dynamic, default_device=default_device)


mp.ModelPatcher._load_list = load_list_on_meta
bridge.devices = lambda role: (META, torch.device("cpu"))


def run(family, path, storage):
    load = load_wan_transformer if family == "wan" else load_sana_transformer
    model, _ = load(path, torch.float32, STORAGE_DTYPES[storage] if storage else None)
    handle = bridge.ModelHandle(model, "diffusion")
    patcher = handle.patcher
    assert bridge.is_dynamic(patcher), f"not ComfyUI's dynamic patcher: {type(patcher).__mro__}"
    # Layers under 16 KiB are force-loaded, patched ones rounded with a generator meta cannot make: patch the others.
    size = {f"module.{n}.weight": comfy.model_management.module_size(m) for n, m in model.named_modules()}
    patcher.add_patches({key: patch for key, patch in weight_patches(model).items() if size[key] > 16 * 1024}, 1.0)
    patcher.load(META)
    module = patcher.model.module
    castable = {n: m for n, m in module.named_modules() if getattr(m, "comfy_cast_weights", False)}
    slotted = {n for n, m in castable.items() if getattr(m, "_v", None) is not None}
    patched = {n for n, m in castable.items() if getattr(m, "weight_lowvram_function", None) is not None}
    on_meta = {n for n, m in castable.items() if m.weight.is_meta}
    patch_keys = {k.removeprefix("module.").removesuffix(".weight") for k in patcher.patches}
    calls.update(cast_bias_weight=0, patch=0)
    mixes = DeviceMixes()
    with mixes:
        out = forward(family, module, META)
    return {"castable": len(castable), "slotted": len(slotted), "force_loaded": len(on_meta),
            "unplaced": sorted(set(castable) - slotted - on_meta), "patch_keys": len(patch_keys),
            "patched_slotted": len(patched & slotted), "unpatched": sorted(patch_keys & slotted - patched),
            "fetches": calls["cast_bias_weight"], "patch_calls": calls["patch"], "meta_mixes": mixes.calls,
            "output": str(out.device)}


with torch.inference_mode():
    results = {name: run(*spec) for name, spec in job["models"].items()}
json.dump(results, open(job["output"], "w"))
