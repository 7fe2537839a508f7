"""Wan2.1 Fun-Camera transformers through the Wan loader: every layout loads with its camera adapter, the config is
inferred, the real layouts map completely on meta; the adapter's hooks add what the adapter computes (written here
with functional ops from the file's tensors) to the patch embeddings; Wan2.2 Fun Camera is refused by name.
(Against ComfyUI's own CameraWanModel: integration/test_comfyui_wan_camera.py.)"""

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from diffusers.loaders import WanLoraLoaderMixin
from safetensors.torch import load_file
from sample_media import as_image_batch, moving_frames
from test_low_vram import META, DeviceMixes, partially_on_meta
from tiny_models import tiny_wan_set, write_wan_files
from tiny_wan_camera import CAMERA_CHANNELS, TINY_CAMERA_CONFIG, tiny_camera_weights, write_camera_layouts

import sana_wan
import tiny_lora
from sana_wan import comfy_bridge as bridge

from sana_wan.controlnet.camera_embedding import camera_embedding
from sana_wan.controlnet.camera_path import preset_path
from sana_wan.controlnet.wan_camera import attach_camera_adapter, camera_model_inputs, is_camera_model
from sana_wan.loaders.meta_build import key_mismatch
from sana_wan.loaders.storage import stored_layers
from sana_wan.loaders.wan_transformer import (
    CAMERA_CONFIG, convert_original_to_diffusers, load_wan_transformer, wan_config_from_shapes, wan_variant,
)
from sana_wan.samplers.wan import wan_velocity
from sana_wan.vae.wan import encode_wan_pixels, to_model_space

NODES = sana_wan.NODE_CLASS_MAPPINGS

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


@pytest.fixture(scope="module")
def camera_nodes(tmp_path_factory):
    """Loaded tiny Fun-Camera model, Wan VAE and an encoded prompt, through the pack's nodes."""
    models = tiny_wan_set()
    directory = str(tmp_path_factory.mktemp("camera_nodes"))
    paths = write_wan_files(models, directory)
    original = tiny_camera_weights(seed=4, text_dim=models["umt5"].config.d_model)
    camera_file = write_camera_layouts(original, os.path.join(directory, "camera"))["comfy_prefixed"]
    (model,) = NODES["WanTransformerLoader"]().load(camera_file, "fp32")
    (encoder,) = NODES["WanTextEncoderLoader"]().load(paths["text_encoder"], "fp32")
    (vae,) = NODES["WanVAELoader"]().load(paths["vae"], "fp32")
    return model, vae, NODES["WanTextEncode"]().encode(encoder, "a room", "blurry", False)


def test_start_image_conditioning_as_native(camera_nodes):
    """WanCameraImageToVideo's values: the start image encoded alone in front, the raw value of a zero latent after
    it, the mask 0 over the image's frames (1 frame + 3), the camera embedding on both prompts."""
    _, vae, (positive, negative) = camera_nodes
    image = as_image_batch(moving_frames(48, 32, 1))
    embedding, *_ = NODES["WanCameraPreset"]().build("Pan Up", 48, 32, 9, 1.0, 0.5, 0.5, 0.5, 0.5)
    pos, neg, latent = NODES["WanCameraImageToVideoConditioning"]().apply(
        positive, negative, vae, 48, 32, 9, 2, start_image=image, camera_conditions=embedding)
    assert latent["samples"].shape == (2, 16, 3, 4, 6) and not latent["samples"].any()
    for conditioning in (pos, neg):
        extras = conditioning[0][1]
        assert extras["camera_conditions"] is embedding
        encoded = encode_wan_pixels(vae.load(), image.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1, tile="off")
        assert torch.equal(extras["concat_latent_image"][:, :, :1], encoded)
        rest = extras["concat_latent_image"][:, :, 1:]
        assert torch.allclose(to_model_space(rest), torch.zeros_like(rest), atol=1e-6)
        mask = extras["concat_mask"]
        assert mask.shape == (1, 4, 3, 4, 6) and not mask[:, :, 0].any() and mask[:, :, 1:].eq(1).all()


def test_sampling_reads_camera_and_start_image(camera_nodes):
    model, vae, (positive, negative) = camera_nodes
    image = as_image_batch(moving_frames(48, 32, 1))
    node, sampler = NODES["WanCameraImageToVideoConditioning"](), NODES["WanSampler"]()

    def sample(preset, start_image):
        embedding = NODES["WanCameraPreset"]().build(preset, 48, 32, 9, 1.0, 0.5, 0.5, 0.5, 0.5)[0]
        pos, neg, latent = node.apply(positive, negative, vae, 48, 32, 9, 1, start_image=start_image,
                                      camera_conditions=embedding)
        return sampler.sample(model, pos, neg, latent, 3, 2, 5.0, 8.0, "flow_euler", "simple", 1.0)[0]["samples"]

    pan, still, pan_image = sample("Pan Left", None), sample("Static", None), sample("Pan Left", image)
    assert torch.isfinite(pan).all() and pan.shape == (1, 16, 3, 4, 6)
    assert (pan - still).abs().max() > 1e-3 and (pan - pan_image).abs().max() > 1e-3
    with pytest.raises(ValueError, match="same width, height and length"):
        node.apply(positive, negative, vae, 48, 32, 13, 1,
                   camera_conditions=NODES["WanCameraPreset"]().build("Static", 48, 32, 9, 1.0, 0.5, 0.5, 0.5, 0.5)[0])


def _camera_forward(model):
    x, text, clip = _inputs(2)
    embedding = camera_embedding(preset_path("Pan Right", 5), WIDTH * 8, HEIGHT * 8)
    with torch.no_grad():
        return model(x, torch.tensor([400.0]), text, clip, return_dict=False, camera_conditions=embedding)[0]


def test_lora_on_a_camera_model_equals_diffusers(files, tmp_path):
    """A Wan LoRA (ComfyUI's lora_A / lora_B names) through Load Wan LoRA on a Fun-Camera model: the forward with the
    camera path equals diffusers' load_lora_adapter + set_adapters on the same model."""
    _, paths = files
    model, variant = load_wan_transformer(paths["comfy_prefixed"])
    lora = tiny_lora.make_lora(model, seed=2)
    path = tiny_lora.save(tiny_lora.original(lora), str(tmp_path / "camera_lora.safetensors"))
    handle = bridge.ModelHandle(copy.deepcopy(model), "diffusion", family="wan", variant=variant)
    (patched,) = NODES["WanLoraLoader"]().load(handle, path, 0.7)
    reference = copy.deepcopy(model)
    reference.load_lora_adapter(WanLoraLoaderMixin.lora_state_dict(load_file(path)), prefix="transformer",
                                adapter_name="a")
    reference.set_adapters(["a"], weights=[0.7])
    ours, expected = _camera_forward(patched.load()), _camera_forward(reference)
    assert (ours - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert (ours - _camera_forward(model)).abs().max() > 1e-2, "the LoRA must change the output"


@pytest.mark.parametrize("storage", [torch.float8_e4m3fn, torch.bfloat16])
def test_weight_storage_holds_the_adapter_too(files, storage):
    """Low-VRAM storage: the adapter's convolutions are stored like the blocks' layers and cast up on each call."""
    _, paths = files
    full, _ = load_wan_transformer(paths["comfy_prefixed"], torch.float32)
    stored, _ = load_wan_transformer(paths["comfy_prefixed"], torch.float32, storage)
    adapter = stored.control_adapter
    assert adapter.conv.weight.dtype == adapter.residual_blocks[0].conv2.weight.dtype == storage
    assert "control_adapter.conv" in stored_layers(full)
    with torch.no_grad():
        for layer in stored_layers(full).values():
            layer.weight.copy_(layer.weight.to(storage).float())
    assert torch.equal(_camera_forward(stored), _camera_forward(full))


def test_step_cache_applies_to_camera_sampling(camera_nodes):
    """Wan Speed Options (First Block Cache) on a Fun-Camera model: threshold 0 caches nothing (the plain run), a
    threshold skips steps and stays near it; the model is left as it was."""
    model, vae, (positive, negative) = camera_nodes
    embedding = NODES["WanCameraPreset"]().build("Zoom Out", 48, 32, 9, 1.0, 0.5, 0.5, 0.5, 0.5)[0]
    pos, neg, latent = NODES["WanCameraImageToVideoConditioning"]().apply(
        positive, negative, vae, 48, 32, 9, 1, camera_conditions=embedding)

    def sample(handle):
        return NODES["WanSampler"]().sample(handle, pos, neg, latent, 5, 6, 5.0, 8.0, "flow_euler", "simple",
                                            1.0)[0]["samples"]

    plain = sample(model)
    for threshold, equal in ((0.0, True), (1.0, False)):
        (fast,) = NODES["WanSpeedOptions"]().apply(model, "default", "first_block", threshold, False)
        cached = sample(fast)
        assert torch.equal(cached, plain) == equal
        assert (cached - plain).abs().max() <= 0.2 * plain.abs().max()  # measured 0.14 at threshold 1
    assert torch.equal(sample(model), plain)


def test_a_partially_loaded_camera_model_computes_only_on_its_load_device(files):
    """A weight budget (ComfyUI's partial loading): the camera adapter's layers fetch their weights like the
    blocks', and the camera embedding and start-image channels go to the load device."""
    _, paths = files
    model, variant = load_wan_transformer(paths["comfy_prefixed"])
    module = partially_on_meta(bridge.ModelHandle(model, "diffusion", family="wan", variant=variant))
    embedding = camera_embedding(preset_path("Pan Up", 5), WIDTH * 8, HEIGHT * 8)
    positive = [[torch.randn(1, 512, 4096), {"camera_conditions": embedding}]]
    predict = wan_velocity(module, positive, positive, 5.0, (1, 16, FRAMES, HEIGHT, WIDTH))
    mixes = DeviceMixes()
    with mixes, torch.inference_mode():
        velocity = predict(torch.randn(1, 16, FRAMES, HEIGHT, WIDTH, device=META), torch.tensor(0.5, device=META), 0, 4)
    assert velocity.device == META and mixes.calls == []


def test_without_clip_a_prompt_of_other_length_is_refused(files):
    _, paths = files
    model, _ = load_wan_transformer(paths["comfy_prefixed"])
    x, text, _ = _inputs(3)
    with pytest.raises(ValueError, match="has 600 tokens; without CLIP features"), torch.no_grad():
        model(x, torch.tensor([300.0]), torch.cat([text, text[:, :88]], dim=1), return_dict=False)
