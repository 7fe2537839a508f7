"""Wan2.2 transformers: the A14B experts from folders that hold both (diffusers pipeline, Wan-AI release), the I2V
experts and TI2V-5B in every layout (test_wan_transformer.py runs their tiny twins through every layout), the real
layouts on meta, GGUF, and the variant's two-expert and TI2V defaults."""

from dataclasses import replace

import pytest
import torch
from gguf import GGMLQuantizationType as T

from sana_wan.loaders.wan_transformer import (
    I2V_A14B, T2V_A14B, convert_original_to_diffusers, load_wan_transformer, wan_config_from_shapes, wan_variant,
)
from gguf_files import write_wan_gguf
from test_wan_transformer import assert_same_layout, meta_model_state_dict, read_manifest
from tiny_wan import tiny_wan_transformer, write_expert_pair_layouts


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    high, low = tiny_wan_transformer(seed=1), tiny_wan_transformer(seed=2)
    return (high, low), write_expert_pair_layouts(high, low, str(tmp_path_factory.mktemp("pairs")), 0.8)


@pytest.mark.parametrize("layout", ["pipeline", "wan_ai"])
@pytest.mark.parametrize("expert", ["high_noise", "low_noise"])
def test_expert_input_picks_one_of_the_two(pairs, layout, expert):
    (high, low), paths = pairs
    model, variant = load_wan_transformer(paths[layout], torch.float32, expert=expert)
    source = high if expert == "high_noise" else low
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    ratio = 0.8 if layout == "pipeline" else T2V_A14B.boundary_ratio  # the pipeline's model_index.json says 0.8
    assert variant.experts == replace(T2V_A14B, boundary_ratio=ratio)
    assert (T2V_A14B.shift, T2V_A14B.cfg, T2V_A14B.cfg_2, T2V_A14B.steps) == (12.0, 4.0, 3.0, 40)


def test_an_unknown_expert_is_refused(pairs):
    with pytest.raises(ValueError, match=r"expert must be one of \['high_noise', 'low_noise'\]"):
        load_wan_transformer(pairs[1]["pipeline"], expert="middle")


def test_a_single_model_ignores_the_expert_input(tmp_path):
    model = tiny_wan_transformer("ti2v")
    model.save_pretrained(str(tmp_path / "ti2v"))
    loaded, variant = load_wan_transformer(str(tmp_path / "ti2v"), torch.float32, expert="low_noise")
    assert torch.equal(loaded.proj_out.weight, model.proj_out.weight)
    assert variant.expand_timesteps and variant.latent_channels == 48 and variant.experts is None


def test_real_i2v_a14b_expert_maps_completely_on_meta(manifests_dir):
    original = read_manifest(manifests_dir, "wan22_i2v_a14b_original")
    config = wan_config_from_shapes({k: tuple(v.shape) for k, v in original.items()})
    assert (config["in_channels"], config["out_channels"], config["image_dim"]) == (36, 16, None)
    assert (config["num_attention_heads"], config["num_layers"], config["ffn_dim"]) == (40, 40, 13824)
    assert_same_layout(convert_original_to_diffusers(original), meta_model_state_dict(config))
    variant = wan_variant(config)
    assert variant.name == "Wan2.2 I2V A14B expert" and variant.is_i2v and variant.experts == I2V_A14B
    assert (I2V_A14B.boundary_ratio, I2V_A14B.shift, I2V_A14B.cfg, I2V_A14B.cfg_2) == (0.9, 5.0, 3.5, 3.5)


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_real_ti2v_5b_maps_completely_on_meta(manifests_dir, layout):
    shapes = read_manifest(manifests_dir, f"wan22_ti2v_5b_{layout}")
    config = wan_config_from_shapes({k: tuple(v.shape) for k, v in shapes.items()})
    assert (config["in_channels"], config["out_channels"], config["num_attention_heads"]) == (48, 48, 24)
    assert (config["num_layers"], config["ffn_dim"]) == (30, 14336)
    diffusers = convert_original_to_diffusers(shapes) if layout == "original" else shapes
    assert_same_layout(diffusers, meta_model_state_dict(config))
    variant = wan_variant(config)
    assert variant.name == "Wan2.2 TI2V 5B" and variant.expand_timesteps and variant.experts is None
    assert (variant.default_shift, variant.default_cfg, variant.default_steps) == (5.0, 5.0, 50)


def test_a_t2v_14b_pair_in_a_folder_is_named_an_expert():
    shape = {"num_attention_heads": 40, "attention_head_dim": 128, "num_layers": 40, "in_channels": 16,
             "out_channels": 16}
    assert wan_variant(shape, {"expert": "low_noise"}).name == "Wan2.2 T2V A14B low-noise expert"
    assert wan_variant(shape).name == "Wan2.1 T2V 14B (or a Wan2.2 A14B expert)"


@pytest.mark.parametrize("variant", ["ti2v", "i2v_a14b"])
def test_gguf_of_wan22_models_loads(tmp_path, variant):
    model = tiny_wan_transformer(variant, seed=3)
    path = write_wan_gguf(model, str(tmp_path / f"wan2.2-{variant}-Q8_0.gguf"), T.Q8_0)
    loaded, info = load_wan_transformer(path, torch.float32)
    assert loaded.config.in_channels == model.config.in_channels
    assert info.expand_timesteps == (variant == "ti2v")
    torch.manual_seed(0)
    x = torch.randn(1, model.config.in_channels, 1, 4, 4)
    text = torch.randn(1, 8, 4096)
    with torch.no_grad():
        ours = loaded(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text).sample
        reference = model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text).sample
    assert (ours - reference).abs().max() <= 0.05 * reference.abs().max(), "Q8_0 rounding only"
