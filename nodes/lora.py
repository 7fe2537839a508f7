"""LoRA loader nodes: a clone of a Sana or Wan model handle carrying a LoRA's weight patches.

The patches are ComfyUI's (ModelPatcher.add_patches), so ComfyUI applies them when the sampler loads the model,
undoes them when another clone loads, and never reads the base model again; chained loaders add up.
"""

from __future__ import annotations

import logging
import math
import os

from .. import comfy_bridge as bridge
from ..loaders.lora import fit_lora, read_lora
from .options import model_choices, resolve_model

FOLDERS = ("loras",)
logger = logging.getLogger(__name__)


class _LoraLoader:
    FAMILY = ""  # "sana" / "wan", the loaders.lora family
    FUNCTION = "load"

    def __init__(self):
        self._last_file = None  # ((path, mtime, size), tensors and metadata): ComfyUI's LoraLoader keeps one too

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (cls.RETURN_TYPES[0],),
            "lora_name": (model_choices(*FOLDERS), {"tooltip": "From models/loras."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                                   "tooltip": "How much of the LoRA to add: 0 = off, 1 = as trained, negative "
                                              "subtracts it."}),
        }}

    def load(self, model, lora_name, strength):
        if not math.isfinite(strength):
            raise ValueError(f"strength must be a finite number, got {strength}.")
        if strength == 0:
            return (model,)
        state_dict, metadata = self._read(resolve_model(FOLDERS, lora_name))
        lora = fit_lora(state_dict, metadata, model.module, self.FAMILY, lora_name)
        _report(lora, lora_name)
        return (bridge.with_weight_patches(model, lora.tensors, lora.layers, strength),)

    def _read(self, path: str):
        stat = os.stat(path)
        stamp = (path, stat.st_mtime_ns, stat.st_size)
        if self._last_file is None or self._last_file[0] != stamp:
            self._last_file = (stamp, read_lora(path))
        return self._last_file[1]


def _report(lora, lora_name: str) -> None:
    if lora.unmatched:
        logger.warning("LoRA '%s': %d keys match no layer of this model and are not applied: %s",
                       lora_name, len(lora.unmatched), ", ".join(lora.unmatched))
    if lora.not_patchable:
        logger.warning("LoRA '%s': %d keys change parameters ComfyUI does not patch (tables of whole blocks, not "
                       "layer weights) and are not applied: %s",
                       lora_name, len(lora.not_patchable), ", ".join(lora.not_patchable))
    logger.info("LoRA '%s': %s patches on %d layers.", lora_name, "/".join(sorted(lora.kinds)), len(lora.layers))


class SanaLoraLoader(_LoraLoader):
    DESCRIPTION = ("Applies a LoRA to a Sana model: diffusers / PEFT, kohya and original-layout files; LoRA, LoHa, "
                   "LoKr and diff weights. Chain several; the loaded model stays as it is.")
    CATEGORY = "Sana"
    RETURN_TYPES = ("SANA_MODEL",)
    FAMILY = "sana"


class WanLoraLoader(_LoraLoader):
    DESCRIPTION = ("Applies a LoRA to a Wan2.1 model: diffusers / PEFT, kohya / musubi, ComfyUI and DiffSynth files; "
                   "LoRA, LoHa, LoKr and diff / diff_b weights. Chain several; the loaded model stays as it is.")
    CATEGORY = "Wan"
    RETURN_TYPES = ("WAN_MODEL",)
    FAMILY = "wan"


NODE_CLASS_MAPPINGS = {"SanaLoraLoader": SanaLoraLoader, "WanLoraLoader": WanLoraLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"SanaLoraLoader": "Sana LoRA Loader", "WanLoraLoader": "Wan LoRA Loader"}
