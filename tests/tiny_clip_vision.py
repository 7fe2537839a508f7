"""A tiny random CLIP image tower (transformers' CLIPVisionModelWithProjection) and every layout the CLIP vision
loader accepts: transformers names (Comfy-Org's clip_vision_h), a diffusers pipeline's image_encoder/ folder
(CLIPVisionModel, no projection), open_clip names and Wan-AI's own names (with a text tower beside it).

The open_clip and Wan-AI key maps are written out here independently of the loader's, so a swapped entry in either
shows up as different features. The image size stays at the real 224 with 14-pixel patches (257 tokens), what
Wan's first-last-frame embedder and ComfyUI's preprocessing assume.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

TINY_CLIP = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=1, image_size=224,
                 patch_size=14, projection_dim=32, hidden_act="gelu", layer_norm_eps=1e-5)
LAYOUTS = ("comfy_safetensors", "diffusers_pipeline", "image_encoder_folder", "open_clip_bin", "wan_original_pth")
# The real ViT-H/14 (ComfyUI's clip_vision_config_h.json, laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
             patch_size=14, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)


def tiny_clip_vision(seed: int = 0, **overrides) -> CLIPVisionModelWithProjection:
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**{**TINY_CLIP, **overrides}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            std = 0.1 if parameter.ndim == 1 else parameter.shape[-1] ** -0.5
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            parameter.copy_(base + torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def comfy_sized_clip_vision(seed: int = 0, layers: int = 2) -> CLIPVisionModelWithProjection:
    """A CLIP tower as wide as ViT-H (1280, the width Wan's and ComfyUI's image embedder read) with few layers and a
    small MLP: what the tiny I2V workflows use with the pack's loader, which reads the sizes off the weights."""
    return tiny_clip_vision(seed, hidden_size=1280, intermediate_size=256, num_hidden_layers=layers,
                            num_attention_heads=16, projection_dim=64)


def real_size_clip_vision_file(path: str, seed: int = 0) -> str:
    """A random-weight CLIP ViT-H/14 at its real size in Comfy-Org's layout (clip_vision_h.safetensors), fp16:
    ComfyUI's native CLIPVisionLoader only builds the released sizes, so native/ours comparisons need it."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H)).state_dict().items()
                  if not k.endswith("position_ids")}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in shapes.items():
        std = 0.02 if len(shape) == 1 else shape[-1] ** -0.5
        base = 1.0 if "norm" in key and key.endswith("weight") else 0.0
        tensors[key] = (base + torch.randn(shape, generator=generator) * std).half()
    save_file(tensors, path)
    return path


def clip_image_processor():
    """The preprocessor_config.json of the diffusers Wan I2V pipelines (image_processor/)."""
    from transformers import CLIPImageProcessor  # imported here: it warns when torchvision is absent

    return CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                              do_center_crop=True, do_normalize=True, do_resize=True, do_rescale=True,
                              resample=3, image_mean=[0.48145466, 0.4578275, 0.40821073],
                              image_std=[0.26862954, 0.26130258, 0.27577711])


def write_clip_layouts(model: CLIPVisionModelWithProjection, directory: str) -> dict[str, str]:
    os.makedirs(directory, exist_ok=True)
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    paths = {
        "comfy_safetensors": os.path.join(directory, "clip_vision_tiny.safetensors"),
        "diffusers_pipeline": os.path.join(directory, "Wan2.1-I2V-tiny-Diffusers"),
        "image_encoder_folder": os.path.join(directory, "Wan2.1-I2V-tiny-Diffusers", "image_encoder"),
        "open_clip_bin": os.path.join(directory, "open_clip_pytorch_model.bin"),
        "wan_original_pth": os.path.join(directory, "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"),
    }
    save_file(state_dict, paths["comfy_safetensors"])
    # The released image_encoder/ folders: CLIPVisionModel saved by transformers 4, keys under `vision_model.`.
    CLIPVisionModel(model.config).save_pretrained(paths["image_encoder_folder"])
    save_file({k: v for k, v in state_dict.items() if not k.startswith("visual_projection")},
              os.path.join(paths["image_encoder_folder"], "model.safetensors"))
    torch.save({**to_open_clip(state_dict), "transformer.resblocks.0.ln_1.weight": torch.ones(8),
                "logit_scale": torch.ones(())}, paths["open_clip_bin"])
    torch.save({**to_wan_original(state_dict), "textual.head.0.weight": torch.ones(4, 8), "log_scale": torch.ones(())},
               paths["wan_original_pth"])
    return paths


def to_open_clip(state_dict: dict) -> dict:
    top = {"class_embedding": "class_embedding", "patch_embedding.weight": "conv1.weight",
           "position_embedding.weight": "positional_embedding"}
    block = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    norms = {"pre_layrnorm": "ln_pre", "post_layernorm": "ln_post"}
    return _visual(state_dict, top, block, norms, "transformer.resblocks.{}.", "attn.in_proj_{}", "proj",
                   lambda key, t: t)


def to_wan_original(state_dict: dict) -> dict:
    top = {"class_embedding": "cls_embedding", "patch_embedding.weight": "patch_embedding.weight",
           "position_embedding.weight": "pos_embedding"}
    block = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj",
             "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"}
    norms = {"pre_layrnorm": "pre_norm", "post_layernorm": "post_norm"}
    # Wan keeps the class token and the positions batched: [1, 1, D] and [1, 257, D].
    return _visual(state_dict, top, block, norms, "transformer.{}.", "attn.to_qkv.{}", "head",
                   lambda key, t: t.reshape(1, *t.shape[-2:]) if t.ndim == 2 else t.reshape(1, 1, -1))


def _visual(state_dict, top, block, norms, block_prefix, fused, projection, batched) -> dict:
    out = {}
    layers = 1 + max(int(k.split(".")[3]) for k in state_dict if k.startswith("vision_model.encoder.layers."))
    for key, tensor in state_dict.items():
        if key == "visual_projection.weight":
            out[f"visual.{projection}"] = tensor.t().contiguous()
            continue
        rest = key.removeprefix("vision_model.")
        if rest.startswith("embeddings."):
            name = top[rest.removeprefix("embeddings.")]
            out[f"visual.{name}"] = tensor if name.endswith("weight") else batched(name, tensor)
        elif rest.split(".")[0] in norms:
            out[f"visual.{norms[rest.split('.')[0]]}.{rest.split('.')[1]}"] = tensor
    for i in range(layers):
        prefix, new = f"vision_model.encoder.layers.{i}.", "visual." + block_prefix.format(i)
        for kind in ("weight", "bias"):
            out[new + fused.format(kind)] = torch.cat([state_dict[f"{prefix}self_attn.{p}_proj.{kind}"]
                                                        for p in "qkv"])
            for old, name in block.items():
                out[f"{new}{name}.{kind}"] = state_dict[f"{prefix}{old}.{kind}"]
    return out
