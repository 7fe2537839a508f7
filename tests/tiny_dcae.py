"""A tiny random DC-AE (Sana's f32c32 architecture at toy widths) and writers for each layout it ships in."""

from __future__ import annotations

import os
import re

import torch
from diffusers import AutoencoderDC
from safetensors.torch import save_file

# Like Sana's: 6 stages (factor 32), 32 latent channels, ResBlocks then EfficientViT blocks, strided-conv
# downsampling, interpolating upsampling. Uneven depths, a batch-norm stage and two attention kernel sizes make
# every field that shapes determine visible to the config inference.
TINY_DCAE_CONFIG = {
    "in_channels": 3,
    "latent_channels": 32,
    "attention_head_dim": 8,
    "encoder_block_types": ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    "decoder_block_types": ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    "encoder_block_out_channels": (8, 8, 16, 16, 32, 32),
    "decoder_block_out_channels": (8, 8, 16, 16, 32, 32),
    "encoder_layers_per_block": (1, 1, 1, 1, 1, 2),
    "decoder_layers_per_block": (1, 1, 1, 1, 2, 1),
    "encoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
    "decoder_qkv_multiscales": ((), (), (), (3,), (3,), (3,)),
    "downsample_block_type": "Conv",
    "upsample_block_type": "interpolate",
    "decoder_norm_types": ("batch_norm",) + ("rms_norm",) * 5,
    "scaling_factor": 0.41407,
}

# dc-ae-f32c32-sana-1.0 as diffusers' scripts/convert_dcae_to_diffusers.py builds it: the real Sana layout, which
# is not AutoencoderDC()'s default (that one has no attention blocks and pixel-(un)shuffle resampling).
SANA_DCAE_CONFIG = {
    "in_channels": 3,
    "latent_channels": 32,
    "attention_head_dim": 32,
    "encoder_block_types": ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    "decoder_block_types": ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    "encoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
    "decoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
    "encoder_layers_per_block": (2, 2, 2, 3, 3, 3),
    "decoder_layers_per_block": (3, 3, 3, 3, 3, 3),
    "encoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
    "decoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
    "downsample_block_type": "Conv",
    "upsample_block_type": "interpolate",
    "decoder_norm_types": "rms_norm",
    "scaling_factor": 0.41407,
}


def tiny_dcae(seed: int = 0) -> AutoencoderDC:
    """Seeded random weights; norms and batch-norm statistics are perturbed too, so no two same-shaped tensors
    are equal and a key mapped onto the wrong tensor changes the output."""
    torch.manual_seed(seed)
    vae = AutoencoderDC(**TINY_DCAE_CONFIG)
    with torch.no_grad():
        for name, tensor in vae.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(1 + 0.2 * torch.rand_like(tensor))
            elif "norm" in name and tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn_like(tensor))
    return vae.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------- original layout

_ORIGINAL_TOP = {
    "encoder.conv_in.": "encoder.project_in.conv.",
    "encoder.conv_out.": "encoder.project_out.main.op_list.0.conv.",
    "decoder.conv_in.": "decoder.project_in.main.conv.",
    "decoder.norm_out.": "decoder.project_out.op_list.0.",
    "decoder.conv_out.": "decoder.project_out.op_list.2.conv.",
}

# Inside one stage layer: diffusers name -> mit-han-lab (efficientvit) name; first matching prefix wins.
_ORIGINAL_LAYER = {
    "conv1.": "main.conv1.conv.",
    "conv2.": "main.conv2.conv.",
    "norm.": "main.conv2.norm.",
    "conv.": "main.conv.conv.",
    "attn.to_qkv_multiscale.0.proj_in.": "context_module.main.aggreg.0.0.",
    "attn.to_qkv_multiscale.0.proj_out.": "context_module.main.aggreg.0.1.",
    "attn.to_out.": "context_module.main.proj.conv.",
    "attn.norm_out.": "context_module.main.proj.norm.",
    "conv_out.conv_inverted.": "local_module.main.inverted_conv.conv.",
    "conv_out.conv_depth.": "local_module.main.depth_conv.conv.",
    "conv_out.conv_point.": "local_module.main.point_conv.conv.",
    "conv_out.norm.": "local_module.main.point_conv.norm.",
}

_STAGE_KEY = re.compile(r"^(encoder|decoder)\.(?:down_blocks|up_blocks)\.(\d+)\.(\d+)\.(.+)$")


def to_original_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of diffusers' `convert_autoencoder_dc_checkpoint_to_diffusers` (test-only): q/k/v fused into
    one 1x1 conv, projections back to 4-D conv weights, efficientvit module names."""
    original = {}
    for key, tensor in state_dict.items():
        if key.endswith(("attn.to_k.weight", "attn.to_v.weight")):
            continue
        if key.endswith("attn.to_q.weight"):
            parent = key[: -len("to_q.weight")]
            tensor = torch.cat([state_dict[parent + f"to_{p}.weight"] for p in "qkv"])
        if key.endswith(("attn.to_q.weight", "attn.to_out.weight")):
            tensor = tensor[:, :, None, None]
        original[_original_key(key)] = tensor.contiguous()
    return original


def _original_key(key: str) -> str:
    for new, old in _ORIGINAL_TOP.items():
        if key.startswith(new):
            return old + key[len(new):]
    side, stage, layer, rest = _STAGE_KEY.match(key).groups()
    if rest.startswith("attn.to_q."):
        rest = "context_module.main.qkv.conv." + rest[len("attn.to_q."):]
    else:
        new = next(n for n in _ORIGINAL_LAYER if rest.startswith(n))
        rest = _ORIGINAL_LAYER[new] + rest[len(new):]
    return f"{side}.stages.{stage}.op_list.{layer}.{rest}"


def write_dcae_layouts(vae: AutoencoderDC, directory: str) -> dict[str, str]:
    """Save `vae` in every layout `load_dcae` reads; layout name -> the path to hand to the loader."""
    state_dict = {k: v.contiguous() for k, v in vae.state_dict().items()}
    paths = {
        "diffusers_folder": os.path.join(directory, "dcae-diffusers"),
        "pipeline_folder": os.path.join(directory, "sana-pipeline"),
        "diffusers_single": os.path.join(directory, "dcae_diffusers.safetensors"),
        "original": os.path.join(directory, "dc-ae-original", "model.safetensors"),
        "original_folder": os.path.join(directory, "dc-ae-original"),
    }
    vae.save_pretrained(paths["diffusers_folder"])
    vae.save_pretrained(os.path.join(paths["pipeline_folder"], "vae"))
    with open(os.path.join(paths["pipeline_folder"], "model_index.json"), "w") as f:
        f.write('{"_class_name": "SanaPipeline", "vae": ["diffusers", "AutoencoderDC"]}')
    save_file(state_dict, paths["diffusers_single"])
    os.makedirs(paths["original_folder"])
    save_file(to_original_layout(state_dict), paths["original"])
    return paths
