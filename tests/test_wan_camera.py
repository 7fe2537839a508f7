"""Wan2.1 Fun-Camera transformers through the Wan loader: every layout loads with its camera adapter, the config is
inferred, the real layouts map completely on meta; the adapter's hooks add what the adapter computes (written here
with functional ops from the file's tensors) to the patch embeddings; Wan2.2 Fun Camera is refused by name.
(Against ComfyUI's own CameraWanModel: integration/test_comfyui_wan_camera.py.)"""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from tiny_wan_camera import CAMERA_CHANNELS, TINY_CAMERA_CONFIG, tiny_camera_weights, write_camera_layouts

from sana_wan.controlnet.camera_embedding import camera_embedding
from sana_wan.controlnet.camera_path import preset_path
from sana_wan.controlnet.wan_camera import attach_camera_adapter, camera_model_inputs, is_camera_model
from sana_wan.loaders.meta_build import key_mismatch
from sana_wan.loaders.wan_transformer import (
    CAMERA_CONFIG, convert_original_to_diffusers, load_wan_transformer, wan_config_from_shapes, wan_variant,
)

FRAMES, HEIGHT, WIDTH = 2, 4, 6  # latent: 5 video frames of 48x32


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    original = tiny_camera_weights(seed=3)
    return original, write_camera_layouts(original, str(tmp_path_factory.mktemp("fun_camera")))


def _plain_model(original) -> WanTransformer3DModel:
    """The same weights in diffusers' Wan model without the adapter: the reference."""
    model = WanTransformer3DModel(**TINY_CAMERA_CONFIG)
    rest = {k: v for k, v in original.items() if not k.startswith("control_adapter.")}
    model.load_state_dict(convert_original_to_diffusers(rest))
    return model.eval()


def _adapter_reference(original, embedding):
    """VideoX-Fun's SimpleAdapter: per frame, 8x8 pixel unshuffle, 2x2 patch conv, relu(conv1) -> conv2 + skip."""
    w = {k[len("control_adapter."):]: v for k, v in original.items() if k.startswith("control_adapter.")}
    batch, channels, frames, height, width = embedding.shape
    x = F.pixel_unshuffle(embedding.permute(0, 2, 1, 3, 4).reshape(-1, channels, height, width), 8)
    x = F.conv2d(x, w["conv.weight"], w["conv.bias"], stride=2)
    block = "residual_blocks.0."
    y = F.conv2d(F.relu(F.conv2d(x, w[block + "conv1.weight"], w[block + "conv1.bias"], padding=1)),
                 w[block + "conv2.weight"], w[block + "conv2.bias"], padding=1) + x
    return y.view(batch, frames, *y.shape[1:]).permute(0, 2, 1, 3, 4)


def _inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 32, FRAMES, HEIGHT, WIDTH, generator=generator)
    text = torch.randn(1, 512, 4096, generator=generator)
    clip = torch.randn(1, 257, 1280, generator=generator)
    return x, text, clip


@pytest.mark.parametrize("layout", ["comfy_prefixed", "original_safetensors"])
def test_layouts_load_with_the_adapter(files, layout):
    original, paths = files
    model, variant = load_wan_transformer(paths[layout])
    assert is_camera_model(model) and variant.is_camera and variant.is_i2v
    assert variant.name == "Wan2.1-like Fun-Camera transformer (128 wide, 2 layers)"
    assert (model.config.in_channels, model.config.out_channels, model.config.image_dim) == (32, 16, 1280)
    loaded = model.state_dict()
    for key, tensor in original.items():
        if key.startswith("control_adapter."):
            assert torch.equal(loaded[key], tensor)


def test_camera_conditions_add_the_adapter_output(files):
    original, paths = files
    model, _ = load_wan_transformer(paths["comfy_prefixed"])
    plain = _plain_model(original)
    embedding = camera_embedding(preset_path("Pan Left", 5), WIDTH * 8, HEIGHT * 8)
    x, text, clip = _inputs()
    offset = _adapter_reference(original, embedding)
    hook = plain.patch_embedding.register_forward_hook(lambda module, args, out: out + offset)
    with torch.no_grad():
        expected = plain(x, torch.tensor([500.0]), text, clip, return_dict=False)[0]
        hook.remove()
        without = plain(x, torch.tensor([500.0]), text, clip, return_dict=False)[0]
        got = model(x, torch.tensor([500.0]), text, clip, return_dict=False, camera_conditions=embedding)[0]
        plain_again = model(x, torch.tensor([500.0]), text, clip, return_dict=False)[0]
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert torch.equal(plain_again, without)  # no conditions: the adapter is left out, and nothing lingers
    assert (got - without).abs().max() > 1e-2


def test_without_clip_the_image_attention_reads_the_prompt(files):
    """As ComfyUI's CameraWanModel without clip_fea: the image keys / values come from the embedded prompt."""
    _, paths = files
    model, _ = load_wan_transformer(paths["comfy_prefixed"])
    x, text, _ = _inputs(1)
    seen = {}
    hook = model.blocks[0].attn2.register_forward_pre_hook(
        lambda module, args: seen.update(context=args[1]))
    with torch.no_grad():
        out = model(x, torch.tensor([300.0]), text, return_dict=False)[0]
        embedded = model.condition_embedder.text_embedder(text)
    hook.remove()
    assert torch.isfinite(out).all()
    assert torch.equal(seen["context"], torch.cat([embedded, embedded], dim=1))


def test_fp8_scaled_file_loads(files):
    _, paths = files
    model, variant = load_wan_transformer(paths["comfy_fp8_scaled"], dtype=torch.float32)
    assert variant.is_camera and model.control_adapter.conv.weight.dtype == torch.float32


def test_model_inputs_check_the_pairing(files):
    _, paths = files
    model, _ = load_wan_transformer(paths["comfy_prefixed"])
    embedding = camera_embedding(preset_path("Zoom In", 5), WIDTH * 8, HEIGHT * 8)
    positive = [[torch.zeros(1, 512, 4096), {"camera_conditions": embedding}]]
    inputs = camera_model_inputs(model, positive, torch.device("cpu"), torch.float32)
    assert inputs(torch.zeros(2, 16, FRAMES, HEIGHT, WIDTH))["camera_conditions"].shape == (2, 24, 2, 32, 48)
    with pytest.raises(ValueError, match="give the camera node the same width, height and length"):
        inputs(torch.zeros(1, 16, 3, HEIGHT, WIDTH))
    assert camera_model_inputs(model, [[torch.zeros(1), {}]], "cpu", torch.float32)(torch.zeros(1)) == {}
    plain = WanTransformer3DModel(**{**TINY_CAMERA_CONFIG, "in_channels": 16, "image_dim": None,
                                     "added_kv_proj_dim": None})
    with pytest.raises(ValueError, match="no camera adapter: load a Wan2.1 Fun-Camera transformer"):
        camera_model_inputs(plain, positive, "cpu", torch.float32)


def test_wan22_fun_camera_is_refused_by_name(tmp_path):
    original = tiny_camera_weights(seed=1, in_channels=36, image_dim=None, added_kv_proj_dim=None)
    path = write_camera_layouts(original, str(tmp_path))["original_safetensors"]
    with pytest.raises(ValueError, match="Wan2.2 Fun A14B Camera"):
        load_wan_transformer(path)


def _manifest(manifests_dir, name):
    with open(os.path.join(manifests_dir, name + ".json")) as f:
        return {k: torch.empty(shape, device="meta") for k, (shape, _) in json.load(f)["tensors"].items()}


@pytest.mark.parametrize("name,size,heads,layers", [("wan21_fun_camera_1_3b_original", "1.3B", 12, 30)])
def test_real_layout_maps_completely_on_meta(manifests_dir, name, size, heads, layers):
    shapes = _manifest(manifests_dir, name)
    config = wan_config_from_shapes({k: tuple(v.shape) for k, v in shapes.items()})
    assert (config["num_attention_heads"], config["num_layers"], config["in_channels"]) == (heads, layers, 32)
    assert (config["image_dim"], config[CAMERA_CONFIG]) == (1280, CAMERA_CHANNELS)
    assert wan_variant(config).name == f"Wan2.1 Fun-Camera {size}"
    plain = {k: v for k, v in config.items() if k != CAMERA_CONFIG}
    with torch.device("meta"):
        model = attach_camera_adapter(WanTransformer3DModel(**plain), config[CAMERA_CONFIG])
    converted = convert_original_to_diffusers(shapes)
    assert key_mismatch(model, {k: tuple(v.shape) for k, v in converted.items()}) == ([], [], [])
