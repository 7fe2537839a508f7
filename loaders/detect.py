"""What model family a checkpoint holds, from its key names alone, for loaders to refuse the wrong file clearly."""

from __future__ import annotations

from collections.abc import Callable

# (family, keys of which one must be present), first match wins; keys are checked with and without the usual
# ComfyUI / diffusers prefixes.
_SIGNATURES = [
    ("Sana ControlNet", ("controlnet.0.before_proj.weight", "input_block.weight")),
    # SD 1.5 / SDXL (original and diffusers), Flux and SD3 ControlNets.
    ("ControlNet for another model family (SD / SDXL / Flux / SD3)", (
        "control_model.zero_convs.0.0.weight", "zero_convs.0.0.weight", "controlnet_cond_embedding.conv_in.weight",
        "controlnet_x_embedder.weight", "pos_embed_input.proj.weight")),
    # Sana-Video shares Sana's names; its feed-forward's temporal convolution tells it apart.
    ("Sana-Video transformer (original layout)", ("blocks.0.mlp.t_conv.weight",)),
    ("Sana-Video transformer (diffusers layout)", ("transformer_blocks.0.ff.conv_temp.weight",)),
    ("Sana transformer (original layout)", ("t_block.1.weight", "y_embedder.y_proj.fc1.weight")),
    ("Sana transformer (diffusers layout)", ("caption_projection.linear_1.weight",)),
    ("Wan transformer (original layout)", ("head.modulation", "blocks.0.self_attn.q.weight")),
    ("Wan transformer (diffusers layout)", ("condition_embedder.time_embedder.linear_1.weight",)),
    ("Wan VAE", ("decoder.middle.0.residual.0.gamma", "decoder.mid_block.resnets.0.norm1.gamma")),
    ("Stable Diffusion / SDXL / Flux VAE", ("decoder.mid.block_1.conv1.weight", "decoder.conv_norm_out.weight")),
    ("DC-AE VAE", ("decoder.project_out.op_list.0.weight", "decoder.norm_out.weight", "decoder.conv_in.weight")),
    ("Gemma-2 text encoder", ("model.layers.0.pre_feedforward_layernorm.weight", "layers.0.pre_feedforward_layernorm.weight")),
    # umT5 has a relative position bias in every block; T5 v1.1 (Flux / SD3 t5xxl) only in block 0. (HF, Wan and
    # llama.cpp GGUF names.)
    ("UMT5 text encoder", ("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight", "blocks.1.pos_embedding.embedding.weight",
                           "enc.blk.1.attn_rel_b.weight")),
    ("T5 text encoder", ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                         "enc.blk.0.attn_rel_b.weight")),
    # transformers / Comfy-Org, open_clip and Wan-AI names of a CLIP image tower.
    ("CLIP vision model", ("vision_model.encoder.layers.0.layer_norm1.weight",
                           "visual.transformer.resblocks.0.attn.in_proj_weight", "visual.transformer.0.attn.to_qkv.weight")),
    ("Stable Diffusion / SDXL UNet", ("model.diffusion_model.input_blocks.0.0.weight", "input_blocks.0.0.weight")),
    ("Flux transformer", ("double_blocks.0.img_attn.qkv.weight",)),
]

_PREFIXES = ("", "model.diffusion_model.", "diffusion_model.", "transformer.", "model.", "text_encoder.", "vae.")


def detect_family(keys) -> str:
    """A human description of the model family the keys belong to ('unknown model' when nothing matches)."""
    keys = set(keys)
    for family, signature in _SIGNATURES:
        if any(prefix + key in keys for key in signature for prefix in _PREFIXES):
            return family
    return "unknown model"


def require_family(keys, expected: str, refusal: Callable[[str], str]) -> None:
    """ValueError with the message `refusal(detected family)` unless the keys are of the `expected` family."""
    family = detect_family(keys)
    if family != expected:
        raise ValueError(refusal(family))


def require_transformer(keys, name: str, model: str) -> bool:
    """Refuse a file that is not a `model` ("Sana", "Wan") transformer, naming what it is instead.

    True for the original layout, False for the diffusers one.
    """
    family = detect_family(keys)
    if family == "unknown model":
        raise ValueError(f"'{name}' is not a {model} transformer: its tensor names match no known model.")
    if not family.startswith(f"{model} transformer"):
        raise ValueError(f"'{name}' is a {family}, not a {model} transformer; load it with the matching loader.")
    return family.endswith("(original layout)")
