"""Runs ComfyUI's own camera code inside a real ComfyUI's Python, for test_comfyui_wan_camera.py: writes a tiny
Wan2.1 Fun-Camera file from ComfyUI's CameraWanModel (random weights), and native WanCameraEmbedding's embeddings
of every preset beside the pack's.

usage: COMFYUI_PYTHON camera_in_comfyui.py JOB.json
JOB: {"comfyui", "pack", "model_file" (where to write the transformer), "output" (prefix of the embeddings file)}
"""

from comfy_job import start

job = start()

import comfy.ops  # noqa: E402
import torch  # noqa: E402
from comfy.ldm.wan.model import CameraWanModel  # noqa: E402
from comfy_extras.nodes_camera_trajectory import WanCameraEmbedding  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from sana_wan.controlnet.camera_embedding import camera_embedding  # noqa: E402
from sana_wan.controlnet.camera_path import PRESETS, preset_path  # noqa: E402

# The smallest model ComfyUI detects as a Wan2.1 Fun-Camera: one 128-channel head, UMT5-XXL's 4096-wide text.
model = CameraWanModel(model_type="camera", in_dim=32, dim=128, ffn_dim=256, num_heads=1, num_layers=2,
                       operations=comfy.ops.disable_weight_init)
generator = torch.Generator().manual_seed(7)
with torch.no_grad():
    for parameter in model.parameters():
        std = 0.2 if parameter.ndim == 1 else parameter[0].numel() ** -0.5
        parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
save_file({"model.diffusion_model." + k: v.contiguous() for k, v in model.state_dict().items()}, job["model_file"])


def native_embedding(*args):
    out = WanCameraEmbedding.execute(*args)
    return (out.result if hasattr(out, "result") else out)[0]


tensors = {}
for preset in PRESETS:
    for width, height, length, speed, focal in ((48, 32, 9, 1.0, (0.5, 0.5, 0.5, 0.5)),
                                                (32, 64, 13, 2.5, (0.4, 0.7, 0.45, 0.55))):
        name = f"{preset}/{width}x{height}x{length}"
        tensors[name + "/native"] = native_embedding(preset, width, height, length, speed, *focal)
        tensors[name + "/pack"] = camera_embedding(preset_path(preset, length, speed, focal), width, height)
save_file({k: v.contiguous() for k, v in tensors.items()}, job["output"] + ".safetensors")
