"""CLIP vision loader (every layout) and encoder against transformers' own model and diffusers' preprocessing."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_clip_vision import LAYOUTS, clip_image_processor, tiny_clip_vision, write_clip_layouts

from sana_wan.loaders.clip_vision import load_clip_vision
from sana_wan.vision.clip import clip_pixels, encode_clip_vision, joined_clip_outputs


@pytest.fixture(scope="module")
def source():
    return tiny_clip_vision(seed=3)


@pytest.fixture(scope="module")
def paths(source, tmp_path_factory):
    return write_clip_layouts(source, str(tmp_path_factory.mktemp("clip")))


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """An IMAGE of 8-bit values, as Load Image gives."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, height, width, 3), generator=generator).float() / 255


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_the_same_tower(source, paths, layout):
    model = load_clip_vision(paths[layout])
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = source(pixel_values=pixels, output_hidden_states=True)
        got = model(pixel_values=pixels, output_hidden_states=True)
    for ours, theirs in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert torch.equal(ours, theirs)
    has_projection = layout not in ("diffusers_pipeline", "image_encoder_folder")
    assert hasattr(got, "image_embeds") == has_projection
    if has_projection:
        assert torch.equal(got.image_embeds, expected.image_embeds)


def test_encode_equals_diffusers_image_processor_and_hidden_states(source, paths):
    """WanImageToVideoPipeline.encode_image: CLIPImageProcessor, then hidden_states[-2]; for an image at the
    model's size the resize of either side leaves it as it is."""
    image = _image(224, 224)
    pil = Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))
    reference_pixels = clip_image_processor()(images=pil, return_tensors="pt").pixel_values
    assert (clip_pixels(image, 224) - reference_pixels).abs().max() <= 1e-6
    with torch.no_grad():
        expected = source(pixel_values=reference_pixels, output_hidden_states=True).hidden_states[-2]
        out = encode_clip_vision(load_clip_vision(paths["comfy_safetensors"]), image)
    assert (out.penultimate_hidden_states - expected).abs().max() <= 1e-5
    assert out["penultimate_hidden_states"] is out.penultimate_hidden_states  # ComfyUI's item access
    assert out.image_embeds.shape == (1, 32) and out.last_hidden_state.shape == (1, 257, 64)


def test_resize_crops_or_squashes_as_comfyui():
    wide = _image(120, 300)
    centre = clip_pixels(wide, 224, "center")
    squashed = clip_pixels(wide, 224, "none")
    assert centre.shape == squashed.shape == (1, 3, 224, 224)
    assert (centre - squashed).abs().max() > 0.1, "center crops the middle, none squashes the whole width"
    # the middle column of the centre crop is the middle column of the original, scaled 224/120 in height
    levels = (clip_pixels(wide, 224, "center") * torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
              + torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)) * 255
    assert (levels - levels.round()).abs().max() <= 1e-3, "values are rounded to 8 bits, as ComfyUI does"


def test_first_last_frame_features_join_along_tokens(source, paths):
    model = load_clip_vision(paths["comfy_safetensors"])
    with torch.no_grad():
        start, end = encode_clip_vision(model, _image(224, 224, 1)), encode_clip_vision(model, _image(224, 224, 2))
    joined = joined_clip_outputs(start, end).penultimate_hidden_states
    assert joined.shape == (1, 514, 64)
    assert torch.equal(joined[:, :257], start.penultimate_hidden_states)
    assert torch.equal(joined[:, 257:], end.penultimate_hidden_states)
    assert joined_clip_outputs(start, None) is start and joined_clip_outputs(None, end) is end


def test_dtype_and_wrong_files_are_clear(paths, tmp_path):
    assert load_clip_vision(paths["comfy_safetensors"], torch.bfloat16).dtype == torch.bfloat16
    from safetensors.torch import save_file
    wan = tmp_path / "wan.safetensors"
    save_file({"head.modulation": torch.zeros(1, 2, 8), "blocks.0.self_attn.q.weight": torch.zeros(8, 8)}, str(wan))
    with pytest.raises(ValueError, match="not a CLIP vision model: it is a Wan transformer.*clip_vision_h"):
        load_clip_vision(str(wan))
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        load_clip_vision(paths["comfy_safetensors"], torch.int8)
    with pytest.raises(ValueError, match="must be an IMAGE"):
        encode_clip_vision(load_clip_vision(paths["comfy_safetensors"]), torch.zeros(224, 224, 3))


@pytest.mark.parametrize("manifest", ["clip_vision_h", "clip_vision_h_diffusers_image_encoder",
                                      "clip_vision_h_wan_original"])
def test_real_vit_h_layouts_map_completely_on_meta(manifests_dir, manifest):
    from test_wan_transformer import read_manifest

    from sana_wan.loaders.clip_vision import clip_vision_from_state_dict, to_transformers_layout
    model = clip_vision_from_state_dict(to_transformers_layout(read_manifest(manifests_dir, manifest)), manifest)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1280, 32, 16)
    assert (config.intermediate_size, config.image_size, config.patch_size, config.hidden_act) == (5120, 224, 14,
                                                                                                    "gelu")
    assert hasattr(model, "visual_projection") == (manifest != "clip_vision_h_diffusers_image_encoder")
    assert all(p.is_meta for p in model.parameters())
    assert 6.3e8 < sum(p.numel() for p in model.parameters()) < 6.35e8  # ViT-H/14's 632 M (+ 1.3 M projection)
