"""Runs the native MODEL adapter inside a real ComfyUI's Python, for test_comfyui_native_model.py: ComfyUI's
`apply_model` on the adapter, fully and partially loaded by its own ModelPatcher, and what is loaded after the
adapter and the handle take turns on the same weights.

usage: COMFYUI_PYTHON native_model_in_comfyui.py JOB.json
JOB: {"comfyui", "pack", "models": {family "wan" / "sana": transformer file}, "output" (prefix)}
"""

import json

from comfy_job import start

job = start()

import comfy.model_management as mm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from sana_wan import comfy_bridge as bridge  # noqa: E402
from sana_wan.loaders.sana_transformer import load_sana_transformer  # noqa: E402
from sana_wan.loaders.wan_transformer import load_wan_transformer  # noqa: E402
from sana_wan.samplers.native import native_spec  # noqa: E402

CPU = torch.device("cpu")
SIGMA = 0.7


def inputs(family, model):
    generator = torch.Generator().manual_seed(3)
    if family == "wan":
        x = torch.randn(1, 16, 2, 4, 4, generator=generator)
        return x, torch.randn(1, 8, model.config.text_dim, generator=generator), None
    x = torch.randn(1, model.config.in_channels, 4, 4, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    return x, torch.randn(1, 6, model.config.caption_channels, generator=generator), mask


def reference(family, model, x, context, mask):
    """x - sigma * velocity, the velocity from the diffusers module called directly (timestep sigma * 1000)."""
    timestep = torch.tensor([SIGMA * 1000.0])
    if family == "wan":
        v = model(hidden_states=x, timestep=timestep, encoder_hidden_states=context, return_dict=False)[0]
    else:
        v = model(x, encoder_hidden_states=context, encoder_attention_mask=mask, timestep=timestep,
                  return_dict=False)[0]
    return x - SIGMA * v


def denoised(native, x, context, mask):
    extra = {} if mask is None else {"attention_mask": mask}
    return native.model.apply_model(x, torch.tensor([SIGMA]), c_crossattn=context, **extra)


def loaded(patcher):
    return any(entry.model is patcher for entry in mm.current_loaded_models)


def run(name, family, path):
    load = load_wan_transformer if family == "wan" else load_sana_transformer
    model, variant = load(path, torch.float32)
    handle = bridge.ModelHandle(model, "diffusion", family=family, variant=variant)
    native = bridge.native_model(handle, native_spec(model, handle.info))
    x, context, mask = inputs(family, model)
    tensors[f"{name}.reference"] = reference(family, model, x, context, mask)
    mm.load_models_gpu([native])
    tensors[f"{name}.full"] = denoised(native, x, context, mask)
    full_lowvram = native.model.model_lowvram
    native.detach()
    native.load(CPU, lowvram_model_memory=native.model_size() // 3)
    cast = [n for n, m in native.model.named_modules() if getattr(m, "comfy_cast_weights", False)]
    tensors[f"{name}.partial"] = denoised(native, x, context, mask)
    partial_lowvram = native.model.model_lowvram
    native.detach()
    mm.load_models_gpu([native])
    handle.load()  # our sampler's load: the adapter over the same weights is unloaded first
    turns = {"handle_after_handle_load": loaded(handle.patcher), "native_after_handle_load": loaded(native)}
    mm.load_models_gpu([native])
    turns.update(handle_after_native_load=loaded(handle.patcher), native_after_native_load=loaded(native))
    return {"full_lowvram": full_lowvram, "partial_lowvram": partial_lowvram, "cast_layers": len(cast),
            "layers": sum(1 for m in model.modules() if m._parameters), **turns,
            "latent_format": type(native.model.latent_format).__name__,
            "shift": float(native.model.model_sampling.shift)}


results, tensors = {}, {}
with torch.inference_mode():  # as ComfyUI's executor runs every node
    for family, path in job["models"].items():
        results[family] = run(family, family, path)
save_file({k: v.contiguous() for k, v in tensors.items()}, job["output"] + ".safetensors")
json.dump(results, open(job["output"] + ".json", "w"))
