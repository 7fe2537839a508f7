"""Sana transformer loading: every layout of every tiny variant, real layouts on the meta device, dtypes, bad files."""

import glob
import json
import os
import re
from pathlib import Path

import pytest
import torch
from diffusers import SanaTransformer2DModel
from safetensors.torch import load_file, save_file

from sana_wan.loaders.sana_transformer import (
    convert_original_to_diffusers,
    load_sana_transformer,
    sana_config_from_shapes,
    sana_variant,
)
from tiny_sana import LAYOUTS, VARIANTS, tiny_sana_transformer, write_sana_layouts

CONFIG_FIELDS = (
    "in_channels", "out_channels", "num_attention_heads", "attention_head_dim", "num_layers",
    "num_cross_attention_heads", "cross_attention_head_dim", "cross_attention_dim", "caption_channels", "mlp_ratio",
    "attention_bias", "sample_size", "patch_size", "interpolation_scale", "qk_norm", "guidance_embeds",
)
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """variant -> (source model, layout -> path, source output); each tiny model is built and written once."""
    cache = {}

    def get(variant):
        if variant not in cache:
            model = tiny_sana_transformer(variant, seed=len(cache))
            paths = write_sana_layouts(model, str(tmp_path_factory.mktemp(variant)))
            cache[variant] = model, paths, forward(model, sprint=variant == "sprint")
        return cache[variant]

    return get


def forward(model, sprint: bool, dtype=torch.float32):
    """The model's output on fixed inputs, on one thread: for ops this small, thread hand-offs cost more than they
    save, most of all on a busy 2-core runner."""
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, model.config.in_channels, 8, 6, generator=generator)
    captions = torch.randn(2, 5, model.config.caption_channels, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return model(
                latents.to(dtype), encoder_hidden_states=captions.to(dtype), encoder_attention_mask=mask,
                timestep=torch.tensor([300.0, 800.0]), guidance=torch.tensor([0.45, 0.45]) if sprint else None,
                return_dict=False,
            )[0]
    finally:
        torch.set_num_threads(threads)


def meta_state_dict(manifest: dict) -> dict[str, torch.Tensor]:
    tensors = manifest["tensors"].items()
    return {k: torch.empty(shape, dtype=DTYPES[dtype], device="meta") for k, (shape, dtype) in tensors}


# A config-less diffusers file cannot carry the PE settings of the 4K model: its fallback has a test of its own.
LOADABLE_AS_WRITTEN = [(v, layout) for v in VARIANTS for layout in LAYOUTS if (v, layout) != ("4k", "diffusers_single")]


@pytest.mark.parametrize(("variant", "layout"), LOADABLE_AS_WRITTEN)
def test_every_layout_loads_to_the_same_model(written, variant, layout):
    source, paths, expected = written(variant)
    model, info = load_sana_transformer(paths[layout])
    for field in CONFIG_FIELDS:
        assert model.config[field] == source.config[field], field
    assert info.is_sprint == (variant == "sprint") and info.latent_channels == 8
    assert expected.abs().max() > 0 and torch.isfinite(expected).all()
    assert torch.equal(forward(model, info.is_sprint), expected)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def test_pe_buffer_is_materialised_like_a_normally_built_model(written):
    source, paths, _ = written("4k")
    model, info = load_sana_transformer(paths["original_safetensors"])
    assert torch.equal(model.patch_embed.pos_embed, source.patch_embed.pos_embed)
    assert info.name == "Sana-like transformer (64 wide, 2 layers) 4K"
    assert (info.sample_size, info.default_shift) == (128, 6.0)


def test_config_less_diffusers_file_is_taken_as_1024px_without_pe(written):
    _, paths, _ = written("4k")
    model, info = load_sana_transformer(paths["diffusers_single"])
    assert model.config.interpolation_scale is None and model.patch_embed.pos_embed is None
    assert info.sample_size == 32


def original_shapes_with_pe(pos_tokens: int) -> dict:
    """The few 1.6B original-layout shapes the config is read from, with a pos_embed of `pos_tokens` tokens."""
    hidden = 2240
    return {
        "x_embedder.proj.weight": (hidden, 32, 1, 1), "y_embedder.y_proj.fc1.weight": (hidden, 2304),
        "final_layer.linear.weight": (32, hidden), "blocks.0.mlp.inverted_conv.conv.weight": (11200, hidden, 1, 1),
        "pos_embed": (1, pos_tokens, hidden),
    }


@pytest.mark.parametrize(
    ("tokens", "sample_size", "scale"), [(256, 16, None), (1024, 32, None), (4096, 64, 1.0), (16384, 128, 2.0)]
)
def test_pe_rule_from_the_original_pos_embed(tokens, sample_size, scale):
    config = sana_config_from_shapes(original_shapes_with_pe(tokens))
    assert (config["sample_size"], config["interpolation_scale"]) == (sample_size, scale)


# manifest -> (variant name, sample_size, default shift, sprint, qk_norm, self heads, cross heads)
MANIFEST_EXPECTATIONS = {
    "sana_600m_original": ("Sana 600M", 32, 3.0, False, None, 36, 16),
    "sana_1600m_1024px_original": ("Sana 1600M", 32, 3.0, False, None, 70, 20),
    "sana_1600m_4k_original": ("Sana 1600M 4K", 128, 6.0, False, None, 70, 20),
    "sana15_1600m_original": ("Sana 1.5 1.6B", 32, 3.0, False, "rms_norm_across_heads", 70, 20),
    "sana_sprint_1600m_original": ("Sana-Sprint 1.6B", 32, 3.0, True, "rms_norm_across_heads", 70, 20),
    "sana_600m_diffusers": ("Sana 600M", 32, 3.0, False, None, 36, 16),
    "sana_1600m_1024px_diffusers": ("Sana 1600M", 32, 3.0, False, None, 70, 20),
    "sana15_1600m_diffusers": ("Sana 1.5 1.6B", 32, 3.0, False, "rms_norm_across_heads", 70, 20),
    "sana_sprint_1600m_diffusers": ("Sana-Sprint 1.6B", 32, 3.0, True, "rms_norm_across_heads", 70, 20),
}
NOT_TRANSFORMERS = ("sana_controlnet_", "sana_video_")


def test_every_sana_transformer_manifest_is_covered(manifests_dir):
    names = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(manifests_dir, "sana*.json"))}
    transformers = {n for n in names if not n.startswith(NOT_TRANSFORMERS)}
    assert transformers == set(MANIFEST_EXPECTATIONS)


@pytest.mark.parametrize("name", MANIFEST_EXPECTATIONS)
def test_real_layout_maps_completely_on_meta(manifests_dir, name):
    with open(os.path.join(manifests_dir, name + ".json")) as f:
        state_dict = meta_state_dict(json.load(f))
    config = sana_config_from_shapes({k: tuple(v.shape) for k, v in state_dict.items()})
    converted = convert_original_to_diffusers(state_dict) if name.endswith("_original") else state_dict
    with torch.device("meta"):
        expected = SanaTransformer2DModel(**config).state_dict()
    assert sorted(set(expected) - set(converted)) == []
    assert sorted(set(converted) - set(expected)) == []
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in expected.items()}
    variant = sana_variant(config)
    variant_name, sample_size, shift, sprint, qk_norm, heads, cross_heads = MANIFEST_EXPECTATIONS[name]
    assert (variant.name, variant.sample_size, variant.default_shift) == (variant_name, sample_size, shift)
    assert (variant.is_sprint, config["qk_norm"]) == (sprint, qk_norm)
    assert (config["num_attention_heads"], config["num_cross_attention_heads"]) == (heads, cross_heads)
    assert variant.latent_channels == 32


@pytest.mark.parametrize("model", ["sana_600m", "sana_1600m_1024px", "sana15_1600m", "sana_sprint_1600m"])
def test_original_converts_to_the_diffusers_release_layout(manifests_dir, model):
    layouts = {}
    for layout in ("original", "diffusers"):
        with open(os.path.join(manifests_dir, f"{model}_{layout}.json")) as f:
            layouts[layout] = meta_state_dict(json.load(f))
    converted = convert_original_to_diffusers(layouts["original"])
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in layouts["diffusers"].items()}


def test_dtype_argument_casts_and_none_keeps_the_file_dtype(written, tmp_path):
    _, paths, reference = written("sprint")
    model, _ = load_sana_transformer(paths["original_pth"], dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.allclose(forward(model, True, torch.bfloat16).float(), reference, atol=0.1 * reference.abs().max())
    bf16_paths = write_sana_layouts(tiny_sana_transformer("4k").to(torch.bfloat16), str(tmp_path))
    kept, _ = load_sana_transformer(bf16_paths["comfy_prefixed"])
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}
    assert kept.patch_embed.pos_embed.dtype == torch.bfloat16


def test_mixed_dtype_file_takes_the_dtype_of_most_weights(written, tmp_path):
    _, paths, _ = written("base")
    state_dict = load_file(paths["original_safetensors"])
    # A few big tensors in fp16 hold most of the weights, the many small ones stay fp32.
    mixed = {k: v.to(torch.float16) if v.numel() >= 8192 else v for k, v in state_dict.items()}
    assert 2 * sum(v.dtype == torch.float16 for v in mixed.values()) < len(mixed)
    save_file(mixed, str(tmp_path / "mixed.safetensors"))
    model, _ = load_sana_transformer(str(tmp_path / "mixed.safetensors"))
    assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_wan_file_is_refused_by_name(tmp_path):
    path = str(tmp_path / "wan.safetensors")
    save_file({
        "head.modulation": torch.zeros(1, 2, 8),
        "blocks.0.self_attn.q.weight": torch.zeros(8, 8),
        "patch_embedding.weight": torch.zeros(8, 16, 1, 2, 2),
    }, path)
    with pytest.raises(ValueError, match="Wan transformer"):
        load_sana_transformer(path)


def test_truncated_file_is_refused(written, tmp_path):
    _, paths, _ = written("base")
    data = Path(paths["original_safetensors"]).read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_sana_transformer(str(path))


def test_diffusers_folder_without_weights_is_refused(written, tmp_path):
    _, paths, _ = written("base")
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "config.json").write_text(Path(paths["diffusers_folder"], "config.json").read_text())
    with pytest.raises(ValueError, match="no diffusion_pytorch_model"):
        load_sana_transformer(str(folder))


@pytest.mark.parametrize(("layout", "removed", "named"), [
    ("original_safetensors", "blocks.1.mlp.point_conv.conv.weight", "transformer_blocks.1.ff.conv_point.weight"),
    ("comfy_prefixed", "model.diffusion_model.blocks.1.cross_attn.kv_linear.bias",
     "transformer_blocks.1.attn2.to_k.bias"),
    ("diffusers_single", "transformer_blocks.0.attn2.to_q.bias", "transformer_blocks.0.attn2.to_q.bias"),
])
def test_missing_key_is_named(written, tmp_path, layout, removed, named):
    _, paths, _ = written("qk_norm")
    state_dict = load_file(paths[layout])
    del state_dict[removed]
    save_file(state_dict, str(tmp_path / "incomplete.safetensors"))
    with pytest.raises(ValueError, match=f"missing .*{re.escape(named)}"):
        load_sana_transformer(str(tmp_path / "incomplete.safetensors"))


def test_leftover_key_is_named_not_ignored(written, tmp_path):
    _, paths, _ = written("base")
    state_dict = load_file(paths["original_safetensors"])
    state_dict["blocks.0.attn.qkv.bias"] = torch.zeros(192)
    state_dict["blocks.0.attn.extra_gate"] = torch.zeros(4)
    save_file(state_dict, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected 4 tensor\(s\).*blocks\.0\.attn\.extra_gate"):
        load_sana_transformer(str(tmp_path / "extra.safetensors"))

