"""Wan2.1 VAE (Wan2.2's: test_wan22_vae.py): every layout loads to the same model, real layouts infer the Wan2.1 config, decoding and encoding
match diffusers' WanPipeline, tiles leave no seams, latent normalisation is the pipeline's, bad input is refused."""

import os
import re

import pytest
import torch
from diffusers import AutoencoderKLQwenImage, AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from diffusers.video_processor import VideoProcessor
from safetensors.torch import save_file

from sana_wan.loaders.wan_vae import (check_wan_vae_layout, convert_wan22_vae_to_diffusers, infer_wan_vae_config,
                                      load_wan_vae)
from sana_wan.vae.wan import (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, decode_wan, encode_wan, to_model_space,
                              to_raw, wan_latent_mean_std)
from tiny_dcae import tiny_dcae
from tiny_wan_vae import (manifest_shapes, meta_vae, public_config, tiny_wan_vae, to_original_layout,
                          write_wan_vae_layouts)

SHAPE_FIELDS = ("base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales",
                "temperal_downsample", "in_channels", "out_channels")


@pytest.fixture(scope="module")
def vae():
    return tiny_wan_vae()


@pytest.fixture(scope="module")
def layouts(vae, tmp_path_factory):
    return write_wan_vae_layouts(vae, str(tmp_path_factory.mktemp("wan_vae")))


def _shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


# ---------------------------------------------------------------------------------------------- loading


def test_original_layout_fixture_inverts_diffusers_converter(vae):
    state_dict = vae.state_dict()
    back = convert_wan_vae_to_diffusers(to_original_layout(state_dict))
    assert set(back) == set(state_dict)
    assert all(torch.equal(back[k], state_dict[k]) for k in state_dict)


@pytest.mark.parametrize("layout", ["diffusers_folder", "pipeline_folder", "diffusers_single", "original_pth",
                                    "comfy_safetensors"])
def test_every_layout_loads_to_the_same_model(vae, layouts, layout):
    loaded = load_wan_vae(layouts[layout])
    assert {f: loaded.config[f] for f in SHAPE_FIELDS} == {f: vae.config[f] for f in SHAPE_FIELDS}
    assert tuple(loaded.config.latents_mean) == WAN21_LATENTS_MEAN
    assert tuple(loaded.config.latents_std) == WAN21_LATENTS_STD
    assert not any(t.is_meta for t in loaded.state_dict().values())
    torch.manual_seed(1)
    latents = torch.randn(1, 16, 2, 3, 4)
    assert torch.equal(loaded.decode(latents).sample, vae.decode(latents).sample)


def test_prefixed_single_file_loads(vae, tmp_path):
    """A file that bundles the VAE under `vae.` beside other models."""
    path = str(tmp_path / "bundle.safetensors")
    original = to_original_layout({k: v.contiguous() for k, v in vae.state_dict().items()})
    save_file({"vae." + k: v for k, v in original.items()} | {"other.weight": torch.zeros(2)}, path)
    assert torch.equal(load_wan_vae(path).decoder.conv_in.weight, vae.decoder.conv_in.weight)


def test_fp16_comfy_file_loads_in_its_dtype_or_the_requested_one(vae, tmp_path):
    """Comfy-Org's wan_2.1_vae.safetensors is fp16."""
    path = str(tmp_path / "wan_2.1_vae.safetensors")
    save_file({k: v.half().contiguous() for k, v in to_original_layout(vae.state_dict()).items()}, path)
    assert {p.dtype for p in load_wan_vae(path).parameters()} == {torch.float16}
    upcast = load_wan_vae(path, dtype=torch.float32)
    assert {p.dtype for p in upcast.parameters()} == {torch.float32}
    assert torch.equal(upcast.decoder.conv_in.weight, vae.decoder.conv_in.weight.half().float())


def test_real_original_layout_infers_the_wan21_config():
    """The real Wan2.1_VAE.pth layout (diffusers' converter inverted on AutoencoderKLWan(), on the meta device)
    gives AutoencoderKLWan()'s whole config, latent statistics included."""
    default = meta_vae()
    shapes = convert_wan_vae_to_diffusers(to_original_layout(_shapes(default.state_dict())))
    config = infer_wan_vae_config(shapes)
    assert public_config(meta_vae(**config).config) == public_config(default.config)


# Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json (diffusers' scripts/convert_wan_to_diffusers.py)
WAN22_REAL_CONFIG = {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "is_residual": True, "in_channels": 12,
                     "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16,
                     "latents_mean": list(WAN22_LATENTS_MEAN), "latents_std": list(WAN22_LATENTS_STD)}
WAN_VAE_MANIFESTS = pytest.mark.parametrize("manifest, convert, real_config", [
    ("wan21_vae_diffusers.json", None, {}), ("wan21_vae_original.json", convert_wan_vae_to_diffusers, {}),
    ("wan22_vae_diffusers.json", None, WAN22_REAL_CONFIG),
    ("wan22_vae_original.json", convert_wan22_vae_to_diffusers, WAN22_REAL_CONFIG)])


def _manifest_in_diffusers_names(manifests_dir, manifest, convert):
    shapes = manifest_shapes(manifests_dir, manifest)
    return convert(shapes) if convert else shapes


@WAN_VAE_MANIFESTS
def test_manifest_maps_with_no_missing_or_unexpected_keys(manifests_dir, manifest, convert, real_config):
    shapes = _manifest_in_diffusers_names(manifests_dir, manifest, convert)
    check_wan_vae_layout(meta_vae(**infer_wan_vae_config(shapes)), shapes, manifest)


@WAN_VAE_MANIFESTS
def test_manifest_infers_the_real_config(manifests_dir, manifest, convert, real_config):
    """Wan2.1: AutoencoderKLWan()'s whole config; Wan2.2: that of Wan2.2-TI2V-5B-Diffusers, statistics included."""
    shapes = _manifest_in_diffusers_names(manifests_dir, manifest, convert)
    assert public_config(meta_vae(**infer_wan_vae_config(shapes)).config) == public_config(
        meta_vae(**real_config).config)


@pytest.mark.parametrize("config", [
    {"base_dim": 16, "dim_mult": [1, 2, 3], "num_res_blocks": 1, "attn_scales": [0.5],
     "temperal_downsample": [True, False]},
    {"base_dim": 8, "decoder_base_dim": 12, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 3,
     "attn_scales": [1.0, 0.25], "temperal_downsample": [False, False, True]},
])
def test_config_inference_reads_every_shape_field(config):
    shapes = _shapes(meta_vae(**config).state_dict())
    inferred = infer_wan_vae_config(shapes)
    expected = public_config(meta_vae(**config).config)
    assert {f: inferred[f] for f in SHAPE_FIELDS} == {f: expected[f] for f in SHAPE_FIELDS}


def test_missing_and_unexpected_keys_are_named(vae, tmp_path):
    state_dict = {k: v.contiguous() for k, v in vae.state_dict().items()}
    del state_dict["decoder.norm_out.gamma"]
    state_dict["decoder.extra.weight"] = torch.zeros(1)
    path = str(tmp_path / "broken.safetensors")
    save_file(state_dict, path)
    with pytest.raises(ValueError, match=r"missing keys \(first: decoder.norm_out.gamma\).*decoder.extra.weight"):
        load_wan_vae(path)


def test_sana_dcae_file_is_refused(tmp_path):
    path = str(tmp_path / "dcae.safetensors")
    save_file({k: v.contiguous() for k, v in tiny_dcae().state_dict().items()}, path)
    with pytest.raises(ValueError, match="not a Wan VAE.*DC-AE VAE"):
        load_wan_vae(path)


def test_other_diffusers_vae_folder_is_refused(tmp_path):
    """Qwen-Image's VAE has the Wan VAE's key names: its config.json is what tells them apart."""
    AutoencoderKLQwenImage(base_dim=8, z_dim=16).save_pretrained(str(tmp_path / "qwen-vae"))
    with pytest.raises(ValueError, match="AutoencoderKLQwenImage, not the Wan VAE"):
        load_wan_vae(str(tmp_path / "qwen-vae"))


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_wan_vae(str(tmp_path))


# ---------------------------------------------------------------------------------------------- latent spaces


def test_latent_statistics_are_diffusers_wan21_defaults():
    config = meta_vae().config
    assert (tuple(config.latents_mean), tuple(config.latents_std)) == (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD)
    mean, std = wan_latent_mean_std()
    assert mean.shape == std.shape == (1, 16, 1, 1, 1)


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="COMFYUI_PATH (a ComfyUI checkout) is not set")
@pytest.mark.parametrize("latent_format, statistics", [("Wan21", (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD)),
                                                        ("Wan22", (WAN22_LATENTS_MEAN, WAN22_LATENTS_STD))])
def test_latent_statistics_equal_comfyuis_latent_formats(latent_format, statistics):
    with open(os.path.join(os.environ["COMFYUI_PATH"], "comfy", "latent_formats.py")) as f:
        source = f.read().split(f"class {latent_format}(")[1].split("\nclass ")[0]
    lists = (re.search(rf"{name} = torch.tensor\(\[(.*?)\]", source, re.S)[1] for name in ("latents_mean", "latents_std"))
    values = tuple(tuple(float(v) for v in numbers.split(",") if v.strip()) for numbers in lists)
    assert values == statistics


def _pipeline_statistics(vae, like):
    """diffusers' WanPipeline / WanVideoToVideoPipeline: mean, and `latents_std` which there holds 1 / std."""
    z_dim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(like.device, like.dtype)
    std_inv = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(like.device, like.dtype)
    return mean, std_inv


def test_to_raw_and_to_model_space_are_the_pipelines_formulas(vae):
    torch.manual_seed(6)
    model_latents, raw = torch.randn(2, 16, 3, 4, 5), torch.randn(2, 16, 3, 4, 5) * 2
    mean, std_inv = _pipeline_statistics(vae, model_latents)
    assert torch.equal(to_raw(model_latents, vae.config), model_latents / std_inv + mean)
    assert torch.equal(to_model_space(raw, vae.config), (raw - mean) * std_inv)
    assert torch.equal(to_raw(model_latents), to_raw(model_latents, vae.config))
    torch.testing.assert_close(to_raw(to_model_space(raw)), raw)
    torch.testing.assert_close(to_model_space(to_raw(model_latents)), model_latents)


def test_statistics_come_from_the_vae_config():
    config = {"latents_mean": [1.0] * 16, "latents_std": [2.0] * 16}
    assert torch.equal(to_raw(torch.ones(1, 16, 1, 1, 1), config), torch.full((1, 16, 1, 1, 1), 3.0))


# ---------------------------------------------------------------------------------------------- decoding


def _pipeline_decode(vae, model_latents):
    """WanPipeline.__call__ after sampling (output_type="pt"), as frames [B*F, H, W, 3]."""
    mean, std_inv = _pipeline_statistics(vae, model_latents)
    video = vae.decode(model_latents / std_inv + mean, return_dict=False)[0]
    video = VideoProcessor(vae_scale_factor=8).postprocess_video(video, output_type="pt")
    return video.permute(0, 1, 3, 4, 2).flatten(0, 1)


def test_decode_matches_the_pipeline(vae):
    """Per video: the pipeline decodes its batch at once, which changes the convolutions' float rounding."""
    torch.manual_seed(2)
    model_latents = torch.randn(2, 16, 3, 4, 5)
    calls = []
    frames = decode_wan(vae, to_raw(model_latents), tile="off", progress=lambda *done_total: calls.append(done_total))
    assert frames.shape == (2 * 9, 32, 40, 3) and frames.dtype == torch.float32 and frames.device.type == "cpu"
    for i in range(2):
        assert torch.equal(frames[9 * i : 9 * (i + 1)], _pipeline_decode(vae, model_latents[i : i + 1]))
    assert calls == [(done, 6) for done in range(1, 7)], "one unit per latent frame of each video"


@pytest.mark.parametrize("latent_frames, frames", [(1, 1), (2, 5), (4, 13)])
def test_frame_count_is_4_per_latent_frame_after_the_first(vae, latent_frames, frames):
    assert decode_wan(vae, torch.randn(1, 16, latent_frames, 2, 2), tile="off").shape == (frames, 16, 16, 3)


def test_decode_runs_in_the_vaes_dtype():
    half = tiny_wan_vae().to(torch.bfloat16)
    frames = decode_wan(half, torch.randn(1, 16, 2, 2, 2), tile="off")
    assert frames.dtype == torch.float32 and 0 <= frames.min() and frames.max() <= 1


def _edge_jumps(frames, edges):
    """Per edge, the mean absolute difference between the pixel columns (then rows) on either side of it."""
    cols = (frames[:, :, 1:] - frames[:, :, :-1]).abs().mean(dim=(0, 1, 3))
    rows = (frames[:, 1:] - frames[:, :-1]).abs().mean(dim=(0, 2, 3))
    index = [e - 1 for e in edges]
    return torch.cat([cols[index], rows[index]])


def _seam_ratio(vae, tile_size, tile_overlap):
    """How much more the tiled video jumps across tile edges than the untiled video does at the same edges.

    Edges are where a tile's blend starts and ends. Random weights make tiled and untiled frames differ everywhere
    (the middle block's attention sees the whole frame), but their texture is alike, so the mean per-edge ratio
    stays near 1 without seams (0.90 to 1.11 over 3 models x 3 latents x 3 tilings) and a hard cut between tiles
    raises it to 1.66 to 2.41.
    """
    torch.manual_seed(4)
    latents = torch.randn(1, 16, 2, 12, 12)
    tiled = decode_wan(vae, latents, tile="on", tile_size=tile_size, tile_overlap=tile_overlap)
    whole = decode_wan(vae, latents, tile="off")
    assert tiled.shape == whole.shape == (5, 96, 96, 3)
    stride, size = tile_size - tile_overlap, tiled.shape[2]
    edges = sorted({e for start in range(stride, size, stride) for e in (start, start + tile_overlap) if e < size})
    return (_edge_jumps(tiled, edges) / _edge_jumps(whole, edges)).mean().item()


def test_tiled_decode_has_no_seams(vae):
    assert _seam_ratio(vae, tile_size=48, tile_overlap=16) < 1.4


def test_seam_check_catches_tiles_without_overlap(vae):
    """Overlap 0 concatenates tiles unblended: the same measure must see the seams."""
    assert _seam_ratio(vae, tile_size=48, tile_overlap=0) > 1.4


def test_auto_tiles_only_frames_larger_than_a_tile(vae):
    torch.manual_seed(5)
    small, large = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 16, 2, 4, 6)
    options = {"tile_size": 32, "tile_overlap": 8}
    assert torch.equal(decode_wan(vae, small, "auto", **options), decode_wan(vae, small, "off", **options))
    assert torch.equal(decode_wan(vae, large, "auto", **options), decode_wan(vae, large, "on", **options))
    assert not torch.equal(decode_wan(vae, large, "auto", **options), decode_wan(vae, large, "off", **options))


def _tiling_state(vae):
    return {k: getattr(vae, k) for k in ("use_tiling", "tile_sample_min_height", "tile_sample_min_width",
                                         "tile_sample_stride_height", "tile_sample_stride_width")}


def test_tiling_does_not_leak_between_calls():
    vae = tiny_wan_vae()
    before = _tiling_state(vae)
    latents = torch.randn(1, 16, 1, 6, 6)
    decode_wan(vae, latents, tile="on", tile_size=32, tile_overlap=8)
    assert _tiling_state(vae) == before

    def interrupted(done, total):
        raise InterruptedError
    with pytest.raises(InterruptedError):
        decode_wan(vae, latents, tile="on", tile_size=32, tile_overlap=8, progress=interrupted)
    assert _tiling_state(vae) == before


# ---------------------------------------------------------------------------------------------- encoding


def test_encode_matches_the_video_to_video_pipeline(vae):
    torch.manual_seed(3)
    frames = torch.rand(5, 32, 40, 3)
    raw = encode_wan(vae, frames, tile="off")
    assert raw.shape == (1, 16, 2, 4, 5) and raw.dtype == torch.float32
    # WanVideoToVideoPipeline.prepare_latents: preprocess_video's 2x-1, retrieve_latents(sample_mode="argmax").
    video = VideoProcessor(vae_scale_factor=8).preprocess_video(frames.permute(0, 3, 1, 2).unsqueeze(0), 32, 40)
    expected = vae.encode(video).latent_dist.mode()
    assert torch.equal(raw, expected)
    mean, std_inv = _pipeline_statistics(vae, expected)
    assert torch.equal(to_model_space(raw), (expected - mean) * std_inv)


def test_tiled_encode_keeps_the_shape(vae):
    raw = encode_wan(vae, torch.rand(1, 64, 48, 3), tile="on", tile_size=32, tile_overlap=16)
    assert raw.shape == (1, 16, 1, 8, 6) and torch.isfinite(raw).all()


# ---------------------------------------------------------------------------------------------- bad input


def test_wrong_channel_count_is_refused(vae):
    with pytest.raises(ValueError, match=r"latent has 48 channels, this Wan VAE expects 16.*Wan2.2 VAE.*decode it "
                                         r"with that VAE"):
        decode_wan(vae, torch.zeros(1, 48, 2, 2, 2))
    with pytest.raises(ValueError, match="image latent"):
        decode_wan(vae, torch.zeros(1, 16, 2, 2))


def test_nan_latents_are_refused(vae):
    latents = torch.zeros(1, 16, 2, 2, 2)
    latents[0, 3, 1, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        decode_wan(vae, latents)


def test_frame_count_must_be_4n_plus_1(vae):
    with pytest.raises(ValueError, match=r"10 frames.*4n\+1.*trim it to 9 or extend it to 13"):
        encode_wan(vae, torch.rand(10, 16, 16, 3))


def test_frame_size_must_be_a_multiple_of_8(vae):
    with pytest.raises(ValueError, match=r"90x50.*multiples of 8.*88x48"):
        encode_wan(vae, torch.rand(1, 50, 90, 3))


@pytest.mark.parametrize("options", [{"tile": "maybe"}, {"tile_size": 100}, {"tile_overlap": 256},
                                     {"tile_overlap": 20}])
def test_bad_tile_options_are_refused(vae, options):
    with pytest.raises(ValueError, match="tile"):
        decode_wan(vae, torch.zeros(1, 16, 1, 2, 2), **options)
