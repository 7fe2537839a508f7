"""Matching sets of tiny models (Sana: Gemma-2, transformer, DC-AE; Wan: UMT5, transformer, VAE) and their files
in ComfyUI's model folders."""

from __future__ import annotations

import os
import shutil
import tempfile

from diffusers import AutoencoderKLWan
from safetensors.torch import save_file

from tiny_dcae import tiny_dcae, write_dcae_layouts
from tiny_gemma import tiny_gemma2, tokenizer_from_spm, train_spm_bytes, write_gemma_layouts
from tiny_sana import tiny_sana_transformer, write_sana_layouts
from tiny_sana_video import tiny_sana_video_transformer, write_sana_video_layouts
from tiny_umt5 import tiny_umt5, write_umt5_layouts
from tiny_umt5 import tokenizer_from_spm as umt5_tokenizer_from_spm
from tiny_umt5 import train_spm_bytes as train_umt5_spm_bytes
from tiny_wan import tiny_wan_transformer, write_wan_layouts
from tiny_wan_vae import tiny_wan_vae, write_wan_vae_layouts
from tiny_wan_vae import to_original_layout as to_wan_vae_original
from tiny_wan_vae import to_wan22_original_layout

# File names as they appear in the loader nodes' lists once placed by `place_in_comfy_folders`.
SANA_FILES = {"transformer": "sana_tiny.pth", "text_encoder": "gemma_2_tiny.safetensors",
              "vae": "dc-ae-tiny.safetensors"}
SANA_SPRINT_FILE = "sana_sprint_tiny.pth"  # fits the same text encoder and DC-AE
SANA_VIDEO_FILE = "sana_video_tiny.pth"  # fits the same text encoder, and the Wan VAE


def tiny_sana_set(variant: str = "base") -> dict:
    """In-memory tiny models whose widths fit together: 32 latent channels, captions as wide as the Gemma.

    `variant` is a tiny_sana variant ("sprint" for a Sana-Sprint transformer).
    """
    spm = train_spm_bytes()
    tokenizer = tokenizer_from_spm(spm)
    gemma = tiny_gemma2(len(tokenizer), seed=1)
    transformer = tiny_sana_transformer(variant, seed=2, in_channels=32, out_channels=32,
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


FOLDERS = {"transformer": "diffusion_models", "text_encoder": "text_encoders", "vae": "vae"}


def place_in_comfy_folders(paths: dict, names: dict, root: str) -> None:
    """Copy written model files under root/{diffusion_models,text_encoders,vae} with the given names."""
    for role, folder in FOLDERS.items():
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        shutil.copy(paths[role], os.path.join(root, folder, names[role]))


WAN_FILES = {"transformer": "wan2.1_t2v_tiny.safetensors", "text_encoder": "umt5_xxl_tiny.safetensors",
             "vae": "wan_2.1_vae_tiny.safetensors"}


def tiny_wan_set(text_width: int = 64) -> dict:
    """In-memory tiny Wan2.1 models that fit together; text_width 4096 (UMT5-XXL's) lets native ComfyUI load the
    transformer too, since it hard-codes that width."""
    spm = train_umt5_spm_bytes()
    tokenizer = umt5_tokenizer_from_spm(spm)
    encoder = tiny_umt5(len(tokenizer), seed=4, d_model=text_width)
    return {"spm": spm, "tokenizer": tokenizer, "umt5": encoder,
            "transformer": tiny_wan_transformer(seed=5, text_dim=text_width), "vae": tiny_wan_vae(seed=6)}


def write_wan_files(models: dict, directory: str) -> dict:
    """The Comfy-Org layouts: repackaged transformer, umt5 single file with its tokenizer, wan_2.1_vae."""
    return {
        "transformer": write_wan_layouts(models["transformer"], os.path.join(directory, "wan"))["comfy_prefixed"],
        "text_encoder": write_umt5_layouts(models["umt5"], models["tokenizer"], models["spm"],
                                           os.path.join(directory, "umt5"))["comfy_single"],
        "vae": write_wan_vae_layouts(models["vae"], os.path.join(directory, "wan_vae"))["comfy_safetensors"],
    }


WAN_I2V_FILES = {"i2v": "wan2.1_i2v_tiny.safetensors", "flf2v": "wan2.1_flf2v_tiny.safetensors",
                 "clip_vision": "clip_vision_h_tiny.safetensors"}


def write_wan_image_to_video_files(models_dir: str, layouts: str) -> None:
    """Tiny Wan2.1 I2V and FLF2V transformers (diffusion_models/) and a 1280-wide two-layer CLIP (clip_vision/) under
    the names of WAN_I2V_FILES; the transformers' text and CLIP widths are the real ones native ComfyUI hard-codes."""
    from tiny_clip_vision import comfy_sized_clip_vision, write_clip_layouts

    for variant in ("i2v", "flf2v"):
        written = write_wan_layouts(tiny_wan_transformer(variant, seed=11, text_dim=4096), os.path.join(layouts, variant))
        shutil.copy(written["comfy_prefixed"], os.path.join(models_dir, "diffusion_models", WAN_I2V_FILES[variant]))
    clip = write_clip_layouts(comfy_sized_clip_vision(seed=12), os.path.join(layouts, "clip"))["comfy_safetensors"]
    os.makedirs(os.path.join(models_dir, "clip_vision"), exist_ok=True)
    shutil.copy(clip, os.path.join(models_dir, "clip_vision", WAN_I2V_FILES["clip_vision"]))


WAN22_FILES = {"t2v_high_noise": "wan2.2_t2v_high_noise_tiny.safetensors",
               "t2v_low_noise": "wan2.2_t2v_low_noise_tiny.safetensors",
               "i2v_high_noise": "wan2.2_i2v_high_noise_tiny.safetensors",
               "i2v_low_noise": "wan2.2_i2v_low_noise_tiny.safetensors",
               "ti2v": "wan2.2_ti2v_5B_tiny.safetensors", "vae": "wan2.2_vae_tiny.safetensors"}


def write_wan22_files(models_dir: str, layouts: str) -> None:
    """Tiny Wan2.2 A14B expert pairs (T2V: the T2V shape, I2V: 36 channels without CLIP), a tiny TI2V-5B (48
    channels) in the Comfy-Org layout and a tiny Wan2.2 VAE, under the names of WAN22_FILES (text width 4096)."""
    from tiny_wan_vae import TINY_WAN22_VAE_CONFIG

    models = {"t2v_high_noise": ("t2v", 21), "t2v_low_noise": ("t2v", 22), "i2v_high_noise": ("i2v_a14b", 23),
              "i2v_low_noise": ("i2v_a14b", 24), "ti2v": ("ti2v", 25)}
    for role, (variant, seed) in models.items():
        written = write_wan_layouts(tiny_wan_transformer(variant, seed=seed, text_dim=4096),
                                    os.path.join(layouts, role))
        shutil.copy(written["comfy_prefixed"], os.path.join(models_dir, "diffusion_models", WAN22_FILES[role]))
    vae = write_wan_vae_layouts(tiny_wan_vae(seed=26, config=TINY_WAN22_VAE_CONFIG), os.path.join(layouts, "vae22"))
    shutil.copy(vae["comfy_safetensors"], os.path.join(models_dir, "vae", WAN22_FILES["vae"]))


def write_all_in_comfy_folders(models_dir: str, input_dir: str) -> None:
    """Every tiny model the example workflows load, under the names above, in ComfyUI's folders below `models_dir`:
    Sana and Sana-Sprint with Gemma-2 and DC-AE, Sana-Video (with that Gemma-2 and the Wan VAE), a Sana ControlNet
    (its control image in `input_dir`), Wan2.1 T2V, I2V, FLF2V, VACE and Fun-Camera with UMT5, CLIP vision and the Wan
    VAE, Wan2.2 A14B pairs and TI2V-5B with the Wan2.2 VAE, two Wan LoRAs. Wan's text width is UMT5-XXL's 4096, which
    native ComfyUI hard-codes, so its KSampler and LoRA loader take the tiny Wan too."""
    from tiny_lora import write_wan_loras
    from tiny_sana_controlnet import write_integration_files
    from tiny_wan_camera import WAN_CAMERA_FILE, tiny_camera_weights, write_camera_layouts
    from tiny_wan_vace import WAN_VACE_FILE, tiny_vace_transformer, write_vace_layouts

    with tempfile.TemporaryDirectory() as layouts:  # every layout is written; one of each is placed
        place_in_comfy_folders(write_sana_files(tiny_sana_set(), layouts), SANA_FILES, models_dir)
        sprint = write_sana_files(tiny_sana_set("sprint"), os.path.join(layouts, "sprint"))["transformer"]
        shutil.copy(sprint, os.path.join(models_dir, "diffusion_models", SANA_SPRINT_FILE))
        video = write_sana_video_layouts(tiny_sana_video_transformer(seed=12), os.path.join(layouts, "video"))
        shutil.copy(video["original_pth"], os.path.join(models_dir, "diffusion_models", SANA_VIDEO_FILE))
        place_in_comfy_folders(write_wan_files(tiny_wan_set(text_width=4096), layouts), WAN_FILES, models_dir)
        vace = write_vace_layouts(tiny_vace_transformer(seed=5, text_dim=4096), os.path.join(layouts, "vace"))
        shutil.copy(vace["comfy_prefixed"], os.path.join(models_dir, "diffusion_models", WAN_VACE_FILE))
        write_wan_image_to_video_files(models_dir, layouts)
        camera = write_camera_layouts(tiny_camera_weights(seed=6), os.path.join(layouts, "camera"))
        shutil.copy(camera["comfy_prefixed"], os.path.join(models_dir, "diffusion_models", WAN_CAMERA_FILE))
        write_wan22_files(models_dir, layouts)
    write_integration_files(os.path.join(models_dir, "controlnet"), input_dir)
    write_wan_loras(os.path.join(models_dir, "loras"))


# Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json: the sizes ComfyUI's VAELoader builds for the Wan2.2 VAE.
WAN22_VAE_REAL_SIZE = {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "is_residual": True, "in_channels": 12,
                       "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16}


def real_size_wan_vae_file(path: str, wan22: bool = False) -> str:
    """A random-weight Wan2.1 VAE (dim 96) or Wan2.2 VAE (705 M parameters, 1.4 GB) at its real size, in the
    Comfy-Org layout and fp16: ComfyUI's native VAELoader only builds those sizes, so native/ours comparisons need
    them."""
    vae = AutoencoderKLWan(**(WAN22_VAE_REAL_SIZE if wan22 else {}))
    to_original = to_wan22_original_layout if wan22 else to_wan_vae_original
    original = to_original({k: v.contiguous() for k, v in vae.state_dict().items()})
    save_file({k: v.half() for k, v in original.items()}, path)
    return path
