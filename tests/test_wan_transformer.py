"""Wan transformer loading: every layout of the tiny T2V / I2V models, fp8 files, real layouts on meta, bad files."""

import glob
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file

from sana_wan.loaders.wan_transformer import (
    convert_original_to_diffusers,
    dequantise_fp8,
    load_wan_transformer,
    wan_config_from_shapes,
    wan_variant,
)
from tiny_sana import tiny_sana_transformer, write_sana_layouts
from tiny_wan import (
    FP8_LAYOUTS, LAYOUTS, VARIANTS, comfy_scaled_fp8, diffusers_to_original, plain_fp8, quantised_reference,
    tiny_wan_transformer, write_wan_layouts,
)

CONFIG_FIELDS = (
    "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim", "freq_dim", "ffn_dim",
    "num_layers", "cross_attn_norm", "qk_norm", "eps", "image_dim", "added_kv_proj_dim", "pos_embed_seq_len",
)
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
TEXT_TOKENS = 512  # diffusers' I2V attention takes the last 512 context tokens as text: the UMT5 length
IMAGE_TOKENS = 3


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors this small cost more in thread hand-offs than they save (building the RoPE tables takes 100x longer
    on two threads of a busy 2-core runner than on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """variant -> (source model, layout -> path, source output); each tiny model is built and written once."""
    cache = {}

    def get(variant):
        if variant not in cache:
            model = tiny_wan_transformer(variant, seed=len(cache))
            paths = write_wan_layouts(model, str(tmp_path_factory.mktemp(variant)))
            cache[variant] = model, paths, forward(model)
        return cache[variant]

    return get


def forward(model, dtype=torch.float32):
    """The model's output on fixed inputs: two timesteps, 3 latent frames of 4 x 6."""
    config = model.config
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, config.in_channels, 3, 4, 6, generator=generator)
    text = torch.randn(2, TEXT_TOKENS if config.image_dim else 7, config.text_dim, generator=generator)
    # first-last-frame models read two images per video, [2B, tokens, D], folded by the model
    images, tokens = (4, config.pos_embed_seq_len // 2) if config.pos_embed_seq_len else (2, IMAGE_TOKENS)
    image = torch.randn(images, tokens, config.image_dim, generator=generator) if config.image_dim else None
    with torch.no_grad():
        return model(
            latents.to(dtype), timestep=torch.tensor([300, 800]), encoder_hidden_states=text.to(dtype),
            encoder_hidden_states_image=None if image is None else image.to(dtype), return_dict=False,
        )[0].float()


def read_manifest(manifests_dir, name: str) -> dict[str, torch.Tensor]:
    """A real layout as meta tensors: its shapes and dtypes at no memory cost."""
    with open(os.path.join(manifests_dir, name + ".json")) as f:
        tensors = json.load(f)["tensors"].items()
    return {k: torch.empty(shape, dtype=DTYPES[dtype], device="meta") for k, (shape, dtype) in tensors}


def meta_model_state_dict(config: dict) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return WanTransformer3DModel(**config).state_dict()


def assert_same_layout(converted: dict, expected: dict) -> None:
    assert sorted(set(expected) - set(converted)) == []
    assert sorted(set(converted) - set(expected)) == []
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in expected.items()}


LOSSLESS = [(variant, layout) for variant in VARIANTS for layout in LAYOUTS if layout not in FP8_LAYOUTS]


@pytest.mark.parametrize(("variant", "layout"), LOSSLESS)
def test_every_layout_loads_to_the_same_model(written, variant, layout):
    source, paths, expected = written(variant)
    model, info = load_wan_transformer(paths[layout])
    for field in CONFIG_FIELDS:
        assert model.config[field] == source.config[field], field
    assert tuple(model.config.patch_size) == (1, 2, 2)
    assert info.is_i2v == (variant not in ("t2v", "ti2v"))
    assert info.latent_channels == (48 if variant == "ti2v" else 16)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert expected.abs().max() > 0 and torch.isfinite(expected).all()
    assert torch.equal(forward(model), expected)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def test_rope_buffers_are_materialised_like_a_normally_built_model(written):
    source, paths, _ = written("t2v")
    model, _ = load_wan_transformer(paths["original_safetensors"], dtype=torch.bfloat16)
    for name in ("freqs_cos", "freqs_sin"):
        built, loaded = getattr(source.rope, name), getattr(model.rope, name)
        assert loaded.dtype == built.dtype == torch.float32 and torch.equal(loaded, built)


@pytest.mark.parametrize("layout", FP8_LAYOUTS)
def test_fp8_files_equal_the_comfyui_dequantised_model(written, layout):
    source, paths, expected = written("t2v")
    model, _ = load_wan_transformer(paths[layout], dtype=torch.float32)
    output = forward(model)
    assert torch.equal(output, forward(quantised_reference(source, scaled=layout == "comfy_fp8_scaled")))
    assert (output - expected).abs().max() < 0.05 * expected.abs().max()


def test_scaled_fp8_consumes_marker_and_scales_and_uses_them(written):
    _, paths, _ = written("t2v")
    raw = load_file(paths["comfy_fp8_scaled"])
    assert "scaled_fp8" in raw and any(k.endswith(".scale_input") for k in raw)
    dequantised = dequantise_fp8(raw, torch.float32)
    assert not [k for k in dequantised if k == "scaled_fp8" or ".scale_" in k]
    key = "blocks.0.ffn.0.weight"
    assert raw[key].dtype == torch.float8_e4m3fn and raw["blocks.0.ffn.0.scale_weight"] != 1
    assert torch.equal(dequantised[key], raw[key].float() * raw["blocks.0.ffn.0.scale_weight"])


def test_scaled_fp8_writer_matches_comfyui_conventions(written):
    """The marker is an empty fp8 tensor, each scale a float32 scalar and each Linear bias fp8, as ComfyUI's
    scaled-fp8 Linear holds them; the other layers keep their dtype."""
    source, _, _ = written("t2v")
    scaled = comfy_scaled_fp8(diffusers_to_original(source.state_dict()))
    assert scaled["scaled_fp8"].dtype == torch.float8_e4m3fn and scaled["scaled_fp8"].numel() == 0
    assert scaled["head.head.scale_weight"].shape == () and scaled["head.head.scale_weight"].dtype == torch.float32
    assert scaled["head.head.bias"].dtype == torch.float8_e4m3fn
    assert scaled["patch_embedding.weight"].dtype == scaled["blocks.0.modulation"].dtype == torch.float32


def test_fp8_file_defaults_to_bf16_and_diffusers_fp32_modules_stay_fp32(written):
    source, paths, expected = written("i2v")
    model, _ = load_wan_transformer(paths["comfy_fp8_scaled"])
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    kept = {name for name, dtype in dtypes.items() if dtype == torch.float32}
    assert set(dtypes.values()) == {torch.bfloat16, torch.float32}
    assert "blocks.0.scale_shift_table" in kept and "condition_embedder.time_embedder.linear_1.weight" in kept
    assert "blocks.0.norm2.weight" in kept and "condition_embedder.image_embedder.norm1.weight" in kept
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    output = forward(model, torch.bfloat16)
    assert (output - expected).abs().max() < 0.1 * expected.abs().max()


def test_e5m2_weights_are_cast(written, tmp_path):
    source, paths, _ = written("t2v")
    path = str(tmp_path / "wan_e5m2.safetensors")
    save_file(plain_fp8(load_file(paths["original_safetensors"]), torch.float8_e5m2), path)
    model, _ = load_wan_transformer(path, dtype=torch.float32)
    reference = quantised_reference(source, scaled=False, fp8=torch.float8_e5m2)
    assert torch.equal(forward(model), forward(reference))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_argument_casts(written, dtype):
    _, paths, expected = written("t2v")
    model, _ = load_wan_transformer(paths["comfy_prefixed"], dtype=dtype)
    assert model.blocks[0].attn1.to_q.weight.dtype == dtype and model.scale_shift_table.dtype == torch.float32
    output = forward(model, dtype)
    assert (output - expected).abs().max() < 0.05 * expected.abs().max()


def test_half_file_keeps_its_dtype(tmp_path):
    path = str(tmp_path / "wan_bf16.safetensors")
    save_file(tiny_wan_transformer(text_dim=16).to(torch.bfloat16).state_dict(), path)
    model, _ = load_wan_transformer(path)
    assert model.patch_embedding.weight.dtype == torch.bfloat16


def test_unsupported_dtype_is_refused(written):
    _, paths, _ = written("t2v")
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        load_wan_transformer(paths["fp8_plain"], dtype=torch.float8_e4m3fn)


def test_every_wan_transformer_manifest_is_covered(manifests_dir):
    names = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(manifests_dir, "wan*.json"))}
    assert {n for n in names if "_vae_" not in n} == {
        f"wan21_{model}_{layout}" for model in ("t2v_1_3b", "i2v_14b", "flf2v_14b") for layout in ("original",
                                                                                                 "diffusers")
    } | {"wan21_fun_camera_1_3b_original",  # test_wan_camera.py
         "wan22_i2v_a14b_original", "wan22_ti2v_5b_diffusers", "wan22_ti2v_5b_original"}  # test_wan22_transformer.py


@pytest.mark.parametrize(("model", "name", "pos_tokens"), [("i2v_14b", "Wan2.1 I2V 14B", None),
                                                           ("flf2v_14b", "Wan2.1 FLF2V 14B", 514)])
def test_real_14b_image_to_video_layouts_map_completely_on_meta(manifests_dir, model, name, pos_tokens):
    """Wan2.1 I2V-14B-480P / -720P and FLF2V-14B-720P as released (Wan-AI, Comfy-Org, diffusers)."""
    layouts = {layout: read_manifest(manifests_dir, f"wan21_{model}_{layout}") for layout in ("original", "diffusers")}
    converted = convert_original_to_diffusers(layouts["original"])
    assert_same_layout(converted, layouts["diffusers"])
    for state_dict in layouts.values():
        config = wan_config_from_shapes({k: tuple(v.shape) for k, v in state_dict.items()})
        assert (config["num_attention_heads"], config["num_layers"], config["ffn_dim"]) == (40, 40, 13824)
        assert (config["in_channels"], config["out_channels"], config["image_dim"]) == (36, 16, 1280)
        assert (config["added_kv_proj_dim"], config["pos_embed_seq_len"]) == (5120, pos_tokens)
        assert_same_layout(converted, meta_model_state_dict(config))
        assert wan_variant(config).name == name


def test_real_1_3b_layouts_map_completely_on_meta(manifests_dir):
    layouts = {name: read_manifest(manifests_dir, f"wan21_t2v_1_3b_{name}") for name in ("original", "diffusers")}
    converted = convert_original_to_diffusers(layouts["original"])
    assert_same_layout(converted, layouts["diffusers"])
    for state_dict in layouts.values():
        config = wan_config_from_shapes({k: tuple(v.shape) for k, v in state_dict.items()})
        assert (config["num_attention_heads"], config["num_layers"], config["ffn_dim"]) == (12, 30, 8960)
        assert (config["text_dim"], config["freq_dim"], config["patch_size"]) == (4096, 256, (1, 2, 2))
        assert (config["in_channels"], config["out_channels"], config["image_dim"]) == (16, 16, None)
        assert config["qk_norm"] == "rms_norm_across_heads" and config["cross_attn_norm"]
        assert_same_layout(converted, meta_model_state_dict(config))
        variant = wan_variant(config)
        assert variant.name == "Wan2.1 T2V 1.3B"
        assert (variant.default_shift, variant.default_cfg, variant.default_steps) == (8.0, 6.0, 50)
        assert (variant.is_i2v, variant.latent_channels) == (False, 16)


WIDTHS_14B = {1536: 5120, 8960: 13824, 9216: 6 * 5120}
I2V_EXTRAS = {
    "img_emb.proj.0.weight": (1280,), "img_emb.proj.0.bias": (1280,),
    "img_emb.proj.1.weight": (1280, 1280), "img_emb.proj.1.bias": (1280,),
    "img_emb.proj.3.weight": (5120, 1280), "img_emb.proj.3.bias": (5120,),
    "img_emb.proj.4.weight": (5120,), "img_emb.proj.4.bias": (5120,),
}
I2V_BLOCK_EXTRAS = {
    "cross_attn.k_img.weight": (5120, 5120), "cross_attn.k_img.bias": (5120,),
    "cross_attn.v_img.weight": (5120, 5120), "cross_attn.v_img.bias": (5120,), "cross_attn.norm_k_img.weight": (5120,),
}


def original_14b_shapes(manifests_dir, task: str) -> dict[str, tuple[int, ...]]:
    """The 1.3B original layout widened to 14B (dim 5120, 40 layers, ffn 13824), plus the I2V / FLF2V tensors."""
    with open(os.path.join(manifests_dir, "wan21_t2v_1_3b_original.json")) as f:
        small = {k: tuple(WIDTHS_14B.get(d, d) for d in shape) for k, (shape, _) in json.load(f)["tensors"].items()}
    shapes = {k: v for k, v in small.items() if not k.startswith("blocks.")}
    block = {k[len("blocks.0."):]: v for k, v in small.items() if k.startswith("blocks.0.")}
    if task != "t2v":
        block.update(I2V_BLOCK_EXTRAS)
        shapes.update(I2V_EXTRAS)
        shapes["patch_embedding.weight"] = (5120, 36, 1, 2, 2)
    if task == "flf2v":
        shapes["img_emb.emb_pos"] = (1, 514, 1280)
    shapes.update({f"blocks.{i}.{k}": v for i in range(40) for k, v in block.items()})
    return shapes


@pytest.mark.parametrize(("task", "name", "image_dim", "pos_tokens"), [
    ("t2v", "Wan2.1 T2V 14B (or a Wan2.2 A14B expert)", None, None), ("i2v", "Wan2.1 I2V 14B", 1280, None),
    ("flf2v", "Wan2.1 FLF2V 14B", 1280, 514),
])
def test_14b_config_is_inferred_and_maps_completely(manifests_dir, task, name, image_dim, pos_tokens):
    shapes = original_14b_shapes(manifests_dir, task)
    config = wan_config_from_shapes(shapes)
    assert (config["num_attention_heads"], config["num_layers"], config["ffn_dim"]) == (40, 40, 13824)
    assert (config["image_dim"], config["pos_embed_seq_len"]) == (image_dim, pos_tokens)
    assert config["added_kv_proj_dim"] == (5120 if image_dim else None)
    converted = convert_original_to_diffusers({k: torch.empty(v, device="meta") for k, v in shapes.items()})
    assert_same_layout(converted, meta_model_state_dict(config))
    variant = wan_variant(config)
    assert variant.name == name and variant.is_i2v == (task != "t2v")
    # Wan's generate.py: I2V 40 steps and shift 3.0 at 832x480 (5.0 above), FLF2V shift 16
    shift, low_res_shift, steps = {"t2v": (5.0, 5.0, 50), "i2v": (5.0, 3.0, 40), "flf2v": (16.0, 16.0, 50)}[task]
    assert (variant.default_shift, variant.default_cfg, variant.default_steps) == (shift, 5.0, steps)
    assert (variant.shift_for(832, 480), variant.shift_for(480, 832), variant.shift_for(1280, 720)) == (
        low_res_shift, low_res_shift, shift)


def test_tiny_variant_gets_a_generic_name(written):
    _, paths, _ = written("t2v")
    _, info = load_wan_transformer(paths["original_safetensors"])
    assert info.name == "Wan2.1-like T2V transformer (128 wide, 2 layers)"
    assert (info.default_shift, info.default_cfg, info.default_steps) == (5.0, 5.0, 50)


def test_sana_file_is_refused_by_name(tmp_path):
    path = write_sana_layouts(tiny_sana_transformer(), str(tmp_path))["original_safetensors"]
    with pytest.raises(ValueError, match="is a Sana transformer"):
        load_wan_transformer(path)


@pytest.mark.parametrize(("overrides", "named"), [
    ({"in_channels": 48}, "48 input and 16 output channels"),
    ({"in_channels": 16, "out_channels": 48}, "16 input and 48 output channels"),
    ({"in_channels": 48, "out_channels": 48, "image_dim": 1280, "added_kv_proj_dim": 128},
     "48 input and 48 output channels and a CLIP image embedder"),
])
def test_unknown_channel_counts_are_refused(tmp_path, overrides, named):
    model = tiny_wan_transformer(num_layers=1, text_dim=16, **overrides)
    path = str(tmp_path / "wan.safetensors")
    save_file(diffusers_to_original(model.state_dict()), path)
    with pytest.raises(ValueError, match=f"{named}, not a Wan2.1 or Wan2.2"):
        load_wan_transformer(path)


def test_add_ons_are_refused(written, tmp_path):
    _, paths, _ = written("t2v")
    state_dict = load_file(paths["original_safetensors"])
    state_dict["face_adapter.fuser_blocks.0.k_norm.weight"] = torch.zeros(128)
    save_file(state_dict, str(tmp_path / "animate.safetensors"))
    with pytest.raises(ValueError, match="Wan2.2 Animate"):
        load_wan_transformer(str(tmp_path / "animate.safetensors"))


def test_other_diffusers_class_is_refused(written, tmp_path):
    _, paths, _ = written("t2v")
    folder = tmp_path / "animate"
    shutil.copytree(paths["diffusers_folder"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "WanAnimateTransformer3DModel"}))
    with pytest.raises(ValueError, match="holds a WanAnimateTransformer3DModel"):
        load_wan_transformer(str(folder))


def test_truncated_file_is_refused(written, tmp_path):
    _, paths, _ = written("t2v")
    data = Path(paths["comfy_fp8_scaled"]).read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_wan_transformer(str(path))


@pytest.mark.parametrize(("layout", "removed", "named"), [
    ("original_safetensors", "blocks.1.ffn.2.weight", "blocks.1.ffn.net.2.weight"),
    ("comfy_prefixed", "model.diffusion_model.blocks.0.norm3.bias", "blocks.0.norm2.bias"),
    ("comfy_fp8_scaled", "blocks.1.cross_attn.k.weight", "blocks.1.attn2.to_k.weight"),
    ("diffusers_single", "blocks.0.attn1.to_q.bias", "blocks.0.attn1.to_q.bias"),
])
def test_missing_key_is_named(written, tmp_path, layout, removed, named):
    _, paths, _ = written("t2v")
    state_dict = load_file(paths[layout])
    del state_dict[removed]
    save_file(state_dict, str(tmp_path / "incomplete.safetensors"))
    with pytest.raises(ValueError, match=f"missing .*{re.escape(named)}"):
        load_wan_transformer(str(tmp_path / "incomplete.safetensors"))


def test_leftover_key_is_named_not_ignored(written, tmp_path):
    _, paths, _ = written("t2v")
    state_dict = load_file(paths["original_safetensors"])
    state_dict["blocks.0.self_attn.extra_gate"] = torch.zeros(4)
    save_file(state_dict, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected 1 tensor\(s\): blocks\.0\.attn1\.extra_gate"):
        load_wan_transformer(str(tmp_path / "extra.safetensors"))
