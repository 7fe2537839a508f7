"""DC-AE: every layout loads to the same model, real layouts infer the right config, decoding and encoding
(tiled or not) match diffusers, tiles leave no seams, bad input is refused clearly."""

import json
import os
import shutil

import pytest
import torch
from diffusers import AutoencoderDC, AutoencoderKL
from diffusers.loaders.single_file_utils import convert_autoencoder_dc_checkpoint_to_diffusers
from safetensors.torch import save_file

from sana_wan.loaders.dcae import SANA_SCALING_FACTOR, check_dcae_layout, infer_dcae_config, load_dcae
from sana_wan.vae.dcae import decode_dcae, encode_dcae
from tiny_dcae import SANA_DCAE_CONFIG, TINY_DCAE_CONFIG, tiny_dcae, to_original_layout, write_dcae_layouts

# Config fields that tensor shapes determine (activations and parameter-free shortcuts do not show in shapes).
SHAPE_FIELDS = ("in_channels", "latent_channels", "encoder_block_types", "decoder_block_types",
                "encoder_block_out_channels", "decoder_block_out_channels", "encoder_layers_per_block",
                "decoder_layers_per_block", "downsample_block_type", "upsample_block_type", "decoder_norm_types")
PER_STAGE_NAMES = ("encoder_block_types", "decoder_block_types", "decoder_norm_types")


@pytest.fixture(scope="module")
def vae():
    return tiny_dcae()


@pytest.fixture(scope="module")
def layouts(vae, tmp_path_factory):
    return write_dcae_layouts(vae, str(tmp_path_factory.mktemp("dcae")))


def _shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _normalized(config, fields):
    """One name for all stages spelled out per stage, lists as tuples: as config.json and defaults differ."""
    stages = len(config["encoder_block_out_channels"])
    return {f: (config[f],) * stages if f in PER_STAGE_NAMES and isinstance(config[f], str) else _tuples(config[f])
            for f in fields}


def _vit_multiscales(config, side):
    """Attention kernel sizes of the stages that have attention (elsewhere the field has no effect)."""
    types = config[f"{side}_block_types"]
    types = (types,) * len(config[f"{side}_block_out_channels"]) if isinstance(types, str) else types
    return [tuple(m) for m, t in zip(config[f"{side}_qkv_multiscales"], types) if t == "EfficientViTBlock"]


# ---------------------------------------------------------------------------------------------- loading


def test_original_layout_fixture_inverts_diffusers_converter(vae):
    state_dict = vae.state_dict()
    back = convert_autoencoder_dc_checkpoint_to_diffusers(to_original_layout(state_dict))
    assert set(back) == set(state_dict)
    assert all(torch.equal(back[k], state_dict[k]) for k in state_dict)


@pytest.mark.parametrize("layout", ["diffusers_folder", "pipeline_folder", "diffusers_single", "original",
                                    "original_folder"])
def test_every_layout_loads_to_the_same_model(vae, layouts, layout):
    loaded = load_dcae(layouts[layout])
    assert loaded.config.scaling_factor == SANA_SCALING_FACTOR
    assert _normalized(loaded.config, SHAPE_FIELDS) == _normalized(TINY_DCAE_CONFIG, SHAPE_FIELDS)
    torch.manual_seed(1)
    latents, images = torch.randn(1, 32, 3, 2), torch.rand(1, 3, 64, 96) * 2 - 1
    assert torch.equal(loaded.decode(latents).sample, vae.decode(latents).sample)
    assert torch.equal(loaded.encode(images).latent, vae.encode(images).latent)


def test_prefixed_single_file_loads(vae, tmp_path):
    """A file that bundles the VAE under `vae.` beside other models."""
    path = str(tmp_path / "bundle.safetensors")
    save_file({"vae." + k: v.contiguous() for k, v in vae.state_dict().items()} | {"other.weight": torch.zeros(2)}, path)
    assert torch.equal(load_dcae(path).decoder.conv_in.weight, vae.decoder.conv_in.weight)


def test_scaling_factor_comes_from_config_json(layouts, tmp_path):
    folder = tmp_path / "dcae"
    shutil.copytree(layouts["diffusers_folder"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "scaling_factor": 0.5}))
    assert load_dcae(str(folder)).config.scaling_factor == 0.5


def test_load_casts_to_the_requested_dtype(layouts):
    loaded = load_dcae(layouts["diffusers_single"], dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert not any(t.is_meta for t in loaded.state_dict().values())


def test_manifest_layout_infers_a_model_with_exactly_its_tensors(manifests_dir):
    with open(os.path.join(manifests_dir, "dcae_f32c32_diffusers.json")) as f:
        shapes = {k: tuple(v[0]) for k, v in json.load(f)["tensors"].items()}
    config = infer_dcae_config(shapes)
    with torch.device("meta"):
        model = AutoencoderDC(**config)
    assert _shapes(model.state_dict()) == shapes
    check_dcae_layout(model, shapes, "manifest")
    assert _normalized(config, SHAPE_FIELDS) == _normalized(SANA_DCAE_CONFIG, SHAPE_FIELDS)


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_real_sana_layout_infers_its_config(layout):
    """dc-ae-f32c32-sana (attention stages, strided-conv down, interpolating up), on the meta device."""
    with torch.device("meta"):
        real = AutoencoderDC(**SANA_DCAE_CONFIG)
    state_dict = real.state_dict()
    if layout == "original":
        state_dict = convert_autoencoder_dc_checkpoint_to_diffusers(to_original_layout(state_dict))
    config = infer_dcae_config(_shapes(state_dict))
    assert _normalized(config, SHAPE_FIELDS) == _normalized(SANA_DCAE_CONFIG, SHAPE_FIELDS)
    for side in ("encoder", "decoder"):
        assert _vit_multiscales(config, side) == _vit_multiscales(SANA_DCAE_CONFIG, side)
    assert config["attention_head_dim"] == SANA_DCAE_CONFIG["attention_head_dim"]
    with torch.device("meta"):
        check_dcae_layout(AutoencoderDC(**config), _shapes(state_dict), "sana")


def test_missing_and_unexpected_keys_are_named(vae, tmp_path):
    state_dict = {k: v.contiguous() for k, v in vae.state_dict().items()}
    del state_dict["decoder.norm_out.weight"]
    state_dict["decoder.extra.weight"] = torch.zeros(1)
    path = str(tmp_path / "broken.safetensors")
    save_file(state_dict, path)
    with pytest.raises(ValueError, match=r"missing keys \(first: decoder.norm_out.weight\).*decoder.extra.weight"):
        load_dcae(path)


@pytest.mark.parametrize("key, family", [
    ("decoder.middle.0.residual.0.gamma", "Wan VAE"),
    ("caption_projection.linear_1.weight", "Sana transformer"),
])
def test_wrong_family_names_what_was_found(tmp_path, key, family):
    path = str(tmp_path / "other.safetensors")
    save_file({key: torch.zeros(4, 4), "encoder.conv1.weight": torch.zeros(4)}, path)
    with pytest.raises(ValueError, match=family):
        load_dcae(path)


def test_other_vae_with_the_same_top_level_names_is_refused(tmp_path):
    """SD / SDXL / Flux VAEs (AutoencoderKL) also have `decoder.conv_in.weight`."""
    path = str(tmp_path / "sdxl_vae.safetensors")
    save_file(AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4).state_dict(), path)
    with pytest.raises(ValueError, match="not a DC-AE"):
        load_dcae(path)


def test_wan_vae_diffusers_folder_is_refused(tmp_path):
    save_file({"decoder.mid_block.resnets.0.norm1.gamma": torch.zeros(4)},
              str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKLWan"}')
    with pytest.raises(ValueError, match="Wan VAE"):
        load_dcae(str(tmp_path))


# ---------------------------------------------------------------------------------------------- decoding


def _postprocessed(sample):
    """diffusers' VaeImageProcessor.postprocess(output_type="pt"), channels last."""
    return (sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def test_decode_matches_diffusers(vae):
    torch.manual_seed(2)
    latents = torch.randn(2, 32, 2, 3)
    calls = []
    images = decode_dcae(vae, latents, tile="off", progress=lambda done, total: calls.append((done, total)))
    assert images.shape == (2, 64, 96, 3) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert 0 <= images.min() and images.max() <= 1
    for i in range(2):
        assert torch.equal(images[i : i + 1], _postprocessed(vae.decode(latents[i : i + 1]).sample))
    blocks = sum(len(stage) for stage in vae.decoder.up_blocks)
    assert calls == [(done, 2 * blocks) for done in range(1, 2 * blocks + 1)], "one unit per decoder block"


def test_decode_runs_in_the_vaes_dtype(vae):
    half = tiny_dcae().to(torch.bfloat16)
    images = decode_dcae(half, torch.randn(1, 32, 2, 2), tile="off")
    assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1


def test_encode_matches_diffusers(vae):
    torch.manual_seed(3)
    images = torch.rand(2, 64, 96, 3)
    latents = encode_dcae(vae, images, tile="off")
    assert latents.shape == (2, 32, 2, 3) and latents.dtype == torch.float32
    expected = vae.encode(images[:1].permute(0, 3, 1, 2) * 2 - 1).latent
    assert torch.equal(latents[:1], expected)


def _edge_jumps(image, edges):
    """Per edge, the mean absolute difference between the pixel columns (then rows) on either side of it."""
    cols = (image[:, :, 1:] - image[:, :, :-1]).abs().mean(dim=(0, 1, 3))
    rows = (image[:, 1:] - image[:, :-1]).abs().mean(dim=(0, 2, 3))
    index = [e - 1 for e in edges]
    return torch.cat([cols[index], rows[index]])


def _seam_ratio(vae, tile_size, tile_overlap):
    """How much more the tiled image jumps across tile edges than the untiled image does at the same edges.

    Edges are where a tile starts or ends. Random weights make tiled and untiled images differ everywhere (the
    attention is global), but their texture is alike, so the mean per-edge ratio stays near 1 without seams (0.8 to
    1.15 over 12 seeds and 4 tilings) and a hard cut between tiles raises it to 1.8 to 2.9.
    """
    torch.manual_seed(4)
    latents = torch.randn(1, 32, 10, 10)
    tiled = decode_dcae(vae, latents, tile="on", tile_size=tile_size, tile_overlap=tile_overlap)
    whole = decode_dcae(vae, latents, tile="off")
    assert tiled.shape == whole.shape == (1, 320, 320, 3)
    stride, size = tile_size - tile_overlap, tiled.shape[2]
    edges = sorted({e for start in range(stride, size, stride) for e in (start, start + tile_overlap)} - {size})
    return (_edge_jumps(tiled, edges) / _edge_jumps(whole, edges)).mean().item()


def test_tiled_decode_has_no_seams(vae):
    assert _seam_ratio(vae, tile_size=128, tile_overlap=32) < 1.4


def test_seam_check_catches_tiles_without_overlap(vae):
    """Overlap 0 concatenates tiles unblended: the same measure must see the seams."""
    assert _seam_ratio(vae, tile_size=128, tile_overlap=0) > 1.4


def test_auto_tiles_only_images_larger_than_a_tile(vae):
    torch.manual_seed(5)
    small, large = torch.randn(1, 32, 4, 4), torch.randn(1, 32, 4, 6)
    options = {"tile_size": 128, "tile_overlap": 32}
    assert torch.equal(decode_dcae(vae, small, "auto", **options), decode_dcae(vae, small, "off", **options))
    assert torch.equal(decode_dcae(vae, large, "auto", **options), decode_dcae(vae, large, "on", **options))
    assert not torch.equal(decode_dcae(vae, large, "auto", **options), decode_dcae(vae, large, "off", **options))


def test_tiled_encode_keeps_the_shape(vae):
    images = torch.rand(1, 192, 128, 3)
    tiled = encode_dcae(vae, images, tile="on", tile_size=64, tile_overlap=32)
    assert tiled.shape == (1, 32, 6, 4) and torch.isfinite(tiled).all()


def _tiling_state(vae):
    return {k: getattr(vae, k) for k in ("use_tiling", "tile_sample_min_height", "tile_sample_min_width",
                                         "tile_sample_stride_height", "tile_sample_stride_width",
                                         "tile_latent_min_height", "tile_latent_min_width")}


def test_tiling_does_not_leak_between_calls():
    vae = tiny_dcae()
    before = _tiling_state(vae)
    latents = torch.randn(1, 32, 6, 6)
    untiled = decode_dcae(vae, latents, tile="off")
    decode_dcae(vae, latents, tile="on", tile_size=64, tile_overlap=32)
    assert _tiling_state(vae) == before
    assert torch.equal(decode_dcae(vae, latents, tile="off"), untiled)

    def interrupted(done, total):
        raise InterruptedError
    with pytest.raises(InterruptedError):
        encode_dcae(vae, torch.rand(1, 96, 96, 3), tile="on", tile_size=64, tile_overlap=32, progress=interrupted)
    assert _tiling_state(vae) == before


# ---------------------------------------------------------------------------------------------- bad input


def test_wrong_channel_count_is_refused(vae):
    with pytest.raises(ValueError, match="latent has 16 channels, this DC-AE expects 32"):
        decode_dcae(vae, torch.zeros(1, 16, 2, 2))
    with pytest.raises(ValueError, match="video latent"):
        decode_dcae(vae, torch.zeros(1, 16, 3, 2, 2))


def test_nan_latents_are_refused(vae):
    latents = torch.zeros(1, 32, 2, 2)
    latents[0, 3, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        decode_dcae(vae, latents)


def test_image_size_must_be_a_multiple_of_32(vae):
    with pytest.raises(ValueError, match=r"1000x600.*multiples of 32.*992x608"):
        encode_dcae(vae, torch.rand(1, 600, 1000, 3))


@pytest.mark.parametrize("options", [{"tile": "maybe"}, {"tile_size": 100}, {"tile_overlap": 1024},
                                     {"tile_overlap": 20}])
def test_bad_tile_options_are_refused(vae, options):
    with pytest.raises(ValueError, match="tile"):
        decode_dcae(vae, torch.zeros(1, 32, 2, 2), **options)
