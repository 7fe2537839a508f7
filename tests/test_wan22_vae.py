"""Wan2.2 VAE (48 channels, Wan2.2-TI2V-5B): every layout loads to the same model (the real layouts: test_wan_vae.py),
decoding and encoding match diffusers' pipelines, tiles work, latent statistics are Wan2.2's."""

import pytest
import torch
from diffusers.video_processor import VideoProcessor

from sana_wan.loaders.wan_vae import convert_wan22_vae_to_diffusers, load_wan_vae
from sana_wan.vae.wan import (WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, decode_wan, encode_wan, to_model_space, to_raw,
                              wan_decode_memory)
from tiny_wan_vae import TINY_WAN22_VAE_CONFIG, tiny_wan_vae, to_wan22_original_layout, write_wan_vae_layouts

SHAPE_FIELDS = ("base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales",
                "temperal_downsample", "in_channels", "out_channels", "is_residual", "patch_size",
                "scale_factor_spatial")


@pytest.fixture(scope="module")
def vae():
    """The tiny Wan2.2 VAE with the real one's latent statistics in its config, as its diffusers folder has them."""
    statistics = {"latents_mean": list(WAN22_LATENTS_MEAN), "latents_std": list(WAN22_LATENTS_STD)}
    return tiny_wan_vae(config={**TINY_WAN22_VAE_CONFIG, **statistics})


@pytest.fixture(scope="module")
def layouts(vae, tmp_path_factory):
    return write_wan_vae_layouts(vae, str(tmp_path_factory.mktemp("wan22_vae")))


# ---------------------------------------------------------------------------------------------- loading


def test_original_layout_fixture_inverts_the_converter(vae):
    state_dict = vae.state_dict()
    back = convert_wan22_vae_to_diffusers(to_wan22_original_layout(state_dict))
    assert set(back) == set(state_dict)
    assert all(torch.equal(back[k], state_dict[k]) for k in state_dict)


@pytest.mark.parametrize("layout", ["diffusers_folder", "pipeline_folder", "diffusers_single", "original_pth",
                                    "comfy_safetensors"])
def test_every_layout_loads_to_the_same_model(vae, layouts, layout):
    loaded = load_wan_vae(layouts[layout])
    assert {f: loaded.config[f] for f in SHAPE_FIELDS} == {f: vae.config[f] for f in SHAPE_FIELDS}
    assert tuple(loaded.config.latents_mean) == WAN22_LATENTS_MEAN
    assert tuple(loaded.config.latents_std) == WAN22_LATENTS_STD
    torch.manual_seed(1)
    latents = torch.randn(1, 48, 2, 2, 3)
    assert torch.equal(loaded.decode(latents).sample, vae.decode(latents).sample)


def test_fp16_comfy_file_loads_in_its_dtype(vae, tmp_path):
    """Comfy-Org's wan2.2_vae.safetensors is fp16."""
    from safetensors.torch import save_file

    path = str(tmp_path / "wan2.2_vae.safetensors")
    save_file({k: v.half().contiguous() for k, v in to_wan22_original_layout(vae.state_dict()).items()}, path)
    assert {p.dtype for p in load_wan_vae(path).parameters()} == {torch.float16}


# ---------------------------------------------------------------------------------------------- latent statistics


def test_48_channel_latents_use_the_wan22_statistics_without_a_config(vae):
    torch.manual_seed(6)
    model_latents = torch.randn(1, 48, 2, 3, 4)
    mean = torch.tensor(WAN22_LATENTS_MEAN).view(1, 48, 1, 1, 1)
    std_inv = 1.0 / torch.tensor(WAN22_LATENTS_STD).view(1, 48, 1, 1, 1)
    assert torch.equal(to_raw(model_latents), model_latents / std_inv + mean)
    assert torch.equal(to_raw(model_latents), to_raw(model_latents, vae.config))
    torch.testing.assert_close(to_model_space(to_raw(model_latents)), model_latents)
    with pytest.raises(ValueError, match="16 .*or 48 .*not 20"):
        to_raw(torch.zeros(1, 20, 1, 1, 1))


# ---------------------------------------------------------------------------------------------- decode / encode


def test_decode_matches_the_pipeline(vae):
    """WanPipeline (TI2V-5B) after sampling: un-normalise, decode, postprocess; one video at a time."""
    torch.manual_seed(2)
    model_latents = torch.randn(2, 48, 2, 2, 3)
    calls = []
    frames = decode_wan(vae, to_raw(model_latents), tile="off", progress=lambda *done_total: calls.append(done_total))
    assert frames.shape == (2 * 5, 32, 48, 3)
    for i in range(2):
        latents = model_latents[i: i + 1]
        raw = latents / (1.0 / torch.tensor(WAN22_LATENTS_STD).view(1, 48, 1, 1, 1)) + torch.tensor(
            WAN22_LATENTS_MEAN).view(1, 48, 1, 1, 1)
        video = VideoProcessor(vae_scale_factor=16).postprocess_video(vae.decode(raw).sample, output_type="pt")
        assert torch.equal(frames[5 * i: 5 * (i + 1)], video.permute(0, 1, 3, 4, 2).flatten(0, 1))
    assert calls == [(done, 4) for done in range(1, 5)], "one unit per latent frame of each video"


def test_encode_matches_the_pipeline(vae):
    """WanImageToVideoPipeline / WanVideoToVideoPipeline: preprocess 2x-1, the posterior mean."""
    torch.manual_seed(3)
    frames = torch.rand(5, 32, 48, 3)
    calls = []
    raw = encode_wan(vae, frames, tile="off", progress=lambda *done_total: calls.append(done_total))
    assert raw.shape == (1, 48, 2, 2, 3)
    video = VideoProcessor(vae_scale_factor=16).preprocess_video(frames.permute(0, 3, 1, 2).unsqueeze(0), 32, 48)
    assert torch.equal(raw, vae.encode(video).latent_dist.mode())
    assert calls == [(1, 2), (2, 2)]


def test_tiled_decode_and_encode(vae):
    """Tiles of 32 pixels (2 latent cells) overlapping by 16: every pixel covered, finite, near the whole frame."""
    torch.manual_seed(4)
    latents = torch.randn(1, 48, 2, 4, 4)
    tiled = decode_wan(vae, latents, tile="on", tile_size=32, tile_overlap=16)
    whole = decode_wan(vae, latents, tile="off")
    assert tiled.shape == whole.shape == (5, 64, 64, 3)
    assert torch.isfinite(tiled).all() and not torch.equal(tiled, whole)
    assert torch.equal(decode_wan(vae, latents, tile="auto", tile_size=32, tile_overlap=16), tiled)
    raw = encode_wan(vae, torch.rand(5, 64, 64, 3), tile="on", tile_size=32, tile_overlap=16)
    assert raw.shape == (1, 48, 2, 4, 4) and torch.isfinite(raw).all()


def test_decode_memory_is_comfyuis_wan22_figure(vae):
    """comfy/sd.py: 8000 x 16 x 16 bytes per latent cell per byte of the dtype (Wan2.1: 7000 x 8 x 8)."""
    assert wan_decode_memory(vae, (1, 48, 2, 30, 52), False, 1024) == 8000 * 16 * 16 * 30 * 52 * 4


def test_wan21_latent_is_refused_by_the_wan22_vae(vae):
    with pytest.raises(ValueError, match=r"latent has 16 channels, this Wan VAE expects 48.*Wan2.1 VAE"):
        decode_wan(vae, torch.zeros(1, 16, 2, 2, 2))


def test_frame_size_must_be_a_multiple_of_16(vae):
    with pytest.raises(ValueError, match=r"40x24.*multiples of 16.*32x32"):
        encode_wan(vae, torch.rand(1, 24, 40, 3))
