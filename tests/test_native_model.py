"""The MODEL adapter outside ComfyUI and for models ComfyUI's samplers cannot drive: clear errors. (Its behaviour
inside ComfyUI is tested against our samplers in integration/test_comfyui_native_model.py.)"""

import pytest
import torch

from sana_wan import comfy_bridge as bridge
from sana_wan.loaders.sana_transformer import SanaVariant
from sana_wan.loaders.wan_transformer import WanVariant
from sana_wan.nodes.native import SanaModelToMODEL, WanModelToMODEL
from sana_wan.samplers.native import native_spec
from tiny_wan import tiny_wan_transformer


def _wan_variant(**traits):
    return WanVariant(**{"name": "tiny", "default_shift": 5.0, "default_cfg": 5.0, "default_steps": 50,
                         "is_i2v": False, "latent_channels": 16, **traits})


def test_standalone_the_node_says_it_needs_comfyui():
    handle = bridge.ModelHandle(tiny_wan_transformer(seed=1), "diffusion", family="wan", variant=_wan_variant())
    with pytest.raises(ValueError, match="inside ComfyUI only"):
        WanModelToMODEL().convert(handle)


def test_wan_spec_calls_the_transformer_with_comfyui_timesteps():
    model = tiny_wan_transformer(seed=1)
    spec = native_spec(model, {"family": "wan", "variant": _wan_variant()})
    x, context, t = torch.randn(1, 16, 1, 4, 4), torch.randn(1, 5, model.config.text_dim), torch.tensor([600.0])
    with torch.no_grad():
        expected = model(hidden_states=x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
        assert torch.equal(spec.forward(x, t, context, None), expected)
    assert (spec.family, spec.shift, spec.latent_channels, spec.uses_mask) == ("wan", 5.0, 16, False)


@pytest.mark.parametrize("variant", ["i2v", "flf2v"])
def test_wan_image_to_video_spec_passes_comfyuis_concat_and_clip_features(variant):
    """ComfyUI hands the adapter c_concat (mask and image latents) and clip_fea (CLIP tokens, start and end image
    joined for FLF2V); the transformer gets them as WanImageToVideoPipeline passes them."""
    model = tiny_wan_transformer(variant, seed=1)
    spec = native_spec(model, {"family": "wan", "variant": _wan_variant(is_i2v=True)})
    generator = torch.Generator().manual_seed(0)
    x, concat = torch.randn(1, 16, 2, 4, 4, generator=generator), torch.randn(1, 20, 2, 4, 4, generator=generator)
    context, t = torch.randn(1, 512, model.config.text_dim, generator=generator), torch.tensor([600.0])
    images = 2 if variant == "flf2v" else 1
    clip = torch.randn(1, 257 * images, 1280, generator=generator)
    with torch.no_grad():
        expected = model(hidden_states=torch.cat([x, concat], 1), timestep=t, encoder_hidden_states=context,
                         encoder_hidden_states_image=clip.reshape(images, 257, 1280), return_dict=False)[0]
        assert torch.equal(spec.forward(x, t, context, None, concat=concat, clip_features=clip), expected)
        with pytest.raises(ValueError, match="reads CLIP image features"):
            spec.forward(x, t, context, None, concat=concat)
    assert spec.image_to_video and spec.latent_channels == 16


@pytest.mark.parametrize("node, info, message", [
    (SanaModelToMODEL, {"family": "sana", "variant": SanaVariant("Sprint", 32, 3.0, True, 32)}, "Sana-Sprint"),
    (WanModelToMODEL, {"family": "wan", "variant": _wan_variant(is_vace=True)}, "VACE"),
    (WanModelToMODEL, {"family": "wan", "variant": _wan_variant(is_i2v=True, is_camera=True)}, "Fun-Camera"),
])
def test_models_the_adapter_cannot_drive_are_refused(node, info, message):
    with pytest.raises(ValueError, match=message):
        native_spec(None, info)
