"""Writes ComfyUI 0.33's quantised-layer files with ComfyUI's own code and loads them with the pack, for
test_comfyui_quantised_files.py.

Per model (a scaled fp8 file): `comfy.utils.convert_old_quants` turns it into the quantised-layer format
(`<layer>.weight_scale`, `<layer>.comfy_quant`), written as it comes and again with the layers' formats in the
`_quantization_metadata` file metadata instead; each loads with the pack's loader, plain and with fp8 weight storage,
and is compared tensor by tensor with the scaled fp8 file's load. A copy whose first layer is marked nvfp4 must be
refused by name.

usage: COMFYUI_PYTHON quantised_files_in_comfyui.py JOB.json
JOB: {"comfyui", "pack", "models": {name: [family "wan" / "umt5", scaled fp8 file]}, "folder", "output" (a .json)}
"""

import json
import os

from comfy_job import start

job = start()

import comfy.utils  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from sana_wan.loaders.umt5 import load_umt5_encoder  # noqa: E402
from sana_wan.loaders.wan_transformer import load_wan_transformer  # noqa: E402

LOADERS = {"wan": load_wan_transformer, "umt5": load_umt5_encoder}


def write_quantised(name, scaled_file):
    """The file in ComfyUI's format, with per-layer comfy_quant tensors and with file metadata; and an nvfp4 copy."""
    state_dict, _ = comfy.utils.convert_old_quants(load_file(scaled_file), "", {})
    assert not any(k.endswith(".scale_weight") for k in state_dict), "ComfyUI did not convert the file"
    tensors = os.path.join(job["folder"], f"{name}_comfy_quant.safetensors")
    save_file(state_dict, tensors)
    layers = {k[: -len(".comfy_quant")]: json.loads(bytes(v.tolist())) for k, v in state_dict.items()
              if k.endswith(".comfy_quant")}
    metadata = os.path.join(job["folder"], f"{name}_quant_metadata.safetensors")
    save_file({k: v for k, v in state_dict.items() if not k.endswith(".comfy_quant")}, metadata,
              metadata={"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})})
    first = sorted(layers)[0]
    nvfp4 = dict(state_dict)
    nvfp4[f"{first}.comfy_quant"] = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8)
    refused = os.path.join(job["folder"], f"{name}_nvfp4.safetensors")
    save_file(nvfp4, refused)
    return {"comfy_quant": tensors, "quant_metadata": metadata}, refused, len(layers)


def state(model):
    return {k: v for k, v in model.state_dict().items()}


results = {}
for name, (family, scaled_file) in job["models"].items():
    load = LOADERS[family]
    files, refused, layers = write_quantised(name, scaled_file)
    result = {"layers": layers, "equal": {}}
    for storage in (None, torch.float8_e4m3fn):
        reference = state(load(scaled_file, None, storage)[0])
        for form, path in files.items():
            loaded = state(load(path, None, storage)[0])
            result["equal"][f"{form}/{storage}"] = loaded.keys() == reference.keys() and all(
                loaded[k].dtype == reference[k].dtype and torch.equal(loaded[k], reference[k]) for k in reference)
    try:
        load(refused)
        result["nvfp4_error"] = None
    except ValueError as error:
        result["nvfp4_error"] = str(error)
    results[name] = result
json.dump(results, open(job["output"], "w"))
