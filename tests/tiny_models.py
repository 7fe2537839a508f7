"""A matching set of tiny Sana models (Gemma-2, transformer, DC-AE) and their files in ComfyUI's model folders."""

from __future__ import annotations

import os
import shutil

from tiny_dcae import tiny_dcae, write_dcae_layouts
from tiny_gemma import tiny_gemma2, tokenizer_from_spm, train_spm_bytes, write_gemma_layouts
from tiny_sana import tiny_sana_transformer, write_sana_layouts

# File names as they appear in the loader nodes' lists once written by `write_comfy_model_folders`.
SANA_FILES = {"transformer": "sana_tiny.pth", "text_encoder": "gemma_2_tiny.safetensors",
              "vae": "dc-ae-tiny.safetensors"}


def tiny_sana_set() -> dict:
    """In-memory tiny models whose widths fit together: 32 latent channels, captions as wide as the Gemma."""
    spm = train_spm_bytes()
    tokenizer = tokenizer_from_spm(spm)
    gemma = tiny_gemma2(len(tokenizer), seed=1)
    transformer = tiny_sana_transformer("base", seed=2, in_channels=32, out_channels=32,
                                        caption_channels=gemma.config.hidden_size)
    return {"spm": spm, "tokenizer": tokenizer, "gemma": gemma, "transformer": transformer, "vae": tiny_dcae(seed=3)}


def write_sana_files(models: dict, directory: str) -> dict:
    """The layouts users download: original transformer .pth, Comfy-Org Gemma file, original DC-AE file."""
    return {
        "transformer": write_sana_layouts(models["transformer"], os.path.join(directory, "sana"))["original_pth"],
        "text_encoder": write_gemma_layouts(models["gemma"], models["tokenizer"], models["spm"],
                                            os.path.join(directory, "gemma"))["comfy_single"],
        "vae": write_dcae_layouts(models["vae"], os.path.join(directory, "dcae"))["original"],
    }


def write_comfy_model_folders(models: dict, root: str) -> None:
    """Place the files under root/{diffusion_models,text_encoders,vae} with the names in SANA_FILES."""
    paths = write_sana_files(models, os.path.join(root, "_layouts"))
    for role, folder in (("transformer", "diffusion_models"), ("text_encoder", "text_encoders"), ("vae", "vae")):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        shutil.copy(paths[role], os.path.join(root, folder, SANA_FILES[role]))
