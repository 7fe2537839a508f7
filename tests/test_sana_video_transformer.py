"""The Sana-Video loader: every layout to the same model, the real layouts mapped completely on meta, and other
families (Sana, Wan, the 720p and LongLive Sana-Video) refused by name."""

import json
import os

import pytest
import torch
from diffusers import SanaVideoTransformer3DModel
from test_sana_transformer import meta_state_dict
from tiny_sana import tiny_sana_transformer, write_sana_layouts
from tiny_sana_video import LAYOUTS, TINY_CONFIG, tiny_sana_video_transformer, write_sana_video_layouts
from tiny_wan import tiny_wan_transformer, write_wan_layouts

from sana_wan.loaders.sana_transformer import load_sana_transformer
from sana_wan.loaders.sana_video_transformer import (
    convert_original_to_diffusers_video, load_sana_video_transformer, sana_video_config_from_shapes,
    sana_video_variant,
)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    model = tiny_sana_video_transformer(seed=3)
    return model, write_sana_video_layouts(model, str(tmp_path_factory.mktemp("sana_video")))


def _forward(model, frames=3):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, frames, 4, 6, generator=generator)
    text = torch.randn(1, 7, TINY_CONFIG["caption_channels"], generator=generator)
    with torch.no_grad():
        return model(x, text, torch.tensor([700.0]), return_dict=False)[0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_to_the_same_model(written, layout):
    source, paths = written
    model, variant = load_sana_video_transformer(paths[layout])
    for field, value in TINY_CONFIG.items():
        assert tuple(model.config[field]) == value if field == "patch_size" else model.config[field] == value, field
    assert torch.equal(_forward(model), _forward(source))
    assert (variant.default_shift, variant.latent_channels) == (8.0, 16)


def test_dtype_and_weight_storage(written):
    _, paths = written
    model, _ = load_sana_video_transformer(paths["original_pth"], dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    stored, _ = load_sana_video_transformer(paths["diffusers_single"], torch.float32, torch.float8_e4m3fn)
    assert stored.transformer_blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert _forward(stored).isfinite().all()


@pytest.mark.parametrize("name", ["sana_video_2b_480p_diffusers", "sana_video_2b_480p_original"])
def test_real_layout_maps_completely_on_meta(manifests_dir, name):
    with open(os.path.join(manifests_dir, name + ".json")) as f:
        state_dict = meta_state_dict(json.load(f))
    converted = convert_original_to_diffusers_video(state_dict) if name.endswith("_original") else state_dict
    config = sana_video_config_from_shapes({k: tuple(v.shape) for k, v in converted.items()})
    with torch.device("meta"):
        expected = SanaVideoTransformer3DModel(**config).state_dict()
    assert sorted(set(expected) - set(converted)) == []
    assert sorted(set(converted) - set(expected)) == []
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in expected.items()}
    assert (config["num_attention_heads"], config["attention_head_dim"], config["mlp_ratio"]) == (20, 112, 3.0)
    assert (config["patch_size"], config["sample_size"], config["qk_norm"]) == ((1, 2, 2), 30, "rms_norm_across_heads")
    assert sana_video_variant(config).name == "Sana-Video 2B 480p"


def test_other_families_are_refused_by_name(tmp_path):
    sana = write_sana_layouts(tiny_sana_transformer(), str(tmp_path / "sana"))
    wan = write_wan_layouts(tiny_wan_transformer(), str(tmp_path / "wan"))
    video = write_sana_video_layouts(tiny_sana_video_transformer(), str(tmp_path / "video"))
    with pytest.raises(ValueError, match="is a Sana transformer \\(original layout\\), not a Sana-Video"):
        load_sana_video_transformer(sana["original_pth"])
    with pytest.raises(ValueError, match="is a Sana transformer \\(diffusers layout\\), not a Sana-Video"):
        load_sana_video_transformer(sana["diffusers_single"])
    with pytest.raises(ValueError, match="is a Wan transformer"):
        load_sana_video_transformer(wan["comfy_prefixed"])
    with pytest.raises(ValueError, match="is a Sana-Video transformer \\(original layout\\), not a Sana transformer"):
        load_sana_transformer(video["original_pth"])
    with pytest.raises(ValueError, match="SanaTransformer2DModel, not a SanaVideoTransformer3DModel"):
        load_sana_video_transformer(sana["diffusers_folder"])


def test_720p_and_longlive_are_refused_with_what_to_use(tmp_path):
    unpatched = write_sana_video_layouts(tiny_sana_video_transformer(patch_size=(1, 1, 1)), str(tmp_path / "720p"))
    with pytest.raises(ValueError, match="720p release uses 1x1 patches over the LTX-2 video VAE"):
        load_sana_video_transformer(unpatched["original_pth"])
    folder = write_sana_video_layouts(tiny_sana_video_transformer(), str(tmp_path / "causal"))["diffusers_folder"]
    config_path = os.path.join(folder, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    with open(config_path, "w") as f:
        json.dump({**config, "_class_name": "SanaVideoCausalTransformer3DModel"}, f)
    with pytest.raises(ValueError, match="causal \\(LongLive.*SANA-Video_2B_480p"):
        load_sana_video_transformer(folder)
