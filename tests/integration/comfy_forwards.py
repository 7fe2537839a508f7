"""What the `*_in_comfyui.py` low-VRAM scripts run: tiny transformer forwards, weight patches in ComfyUI's format, and
a check that no torch call mixes devices. Imported after comfy_job.start() registered the pack."""

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from sana_wan.loaders.storage import stored_layers

CPU = torch.device("cpu")


class DeviceMixes(TorchFunctionMode):
    """Records torch calls that get tensors on two devices, copies between devices (ComfyUI's cast_to) aside."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {t.device for t in pytree.tree_leaves((args, kwargs))
                   if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.dim() == 0)}
        if len(devices) > 1 and getattr(func, "__name__", "") != "copy_":
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


def inputs(family, model, device):
    generator = torch.Generator().manual_seed(3)
    if family == "wan":
        return {"hidden_states": torch.randn(1, 16, 2, 4, 4, generator=generator).to(device),
                "timestep": torch.tensor([700.0], device=device),
                "encoder_hidden_states": torch.randn(1, 8, model.config.text_dim, generator=generator).to(device)}
    channels = model.config.in_channels
    return {"hidden_states": torch.randn(1, channels, 4, 4, generator=generator).to(device),
            "encoder_hidden_states": torch.randn(1, 6, model.config.caption_channels, generator=generator).to(device),
            "encoder_attention_mask": torch.ones(1, 6, device=device), "timestep": torch.tensor([700.0], device=device)}


def forward(family, model, device=CPU):
    with torch.no_grad():
        return model(**inputs(family, model, device), return_dict=False)[0]


def weight_patches(model):
    """A 'diff' patch (ComfyUI's weight-patch format) on every stored layer's weight."""
    generator = torch.Generator().manual_seed(4)
    return {f"module.{name}.weight": ("diff", (torch.randn(layer.weight.shape, generator=generator) * 0.05,))
            for name, layer in stored_layers(model).items()}
