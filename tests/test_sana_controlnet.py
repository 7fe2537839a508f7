"""Sana ControlNet: the loader's layouts, and the nodes against diffusers' SanaControlNetPipeline.

The tiny transformer (3 blocks) and ControlNet (2 blocks, so both its outputs are added) are written to disk in the
layouts users have and loaded back by the loader nodes; the references get the in-memory source models. Same
prompt, control image, seed's noise and settings: the images must agree to float32 rounding.
"""

import inspect
import json
import os

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SanaControlNetModel, SanaControlNetPipeline
from safetensors.torch import save_file
from tiny_models import tiny_sana_set, write_sana_files
from tiny_sana import tiny_sana_transformer
from tiny_sana_controlnet import LAYOUTS, controlnet_to_original, tiny_sana_controlnet, write_controlnet_layouts

import sana_wan
from sana_wan import comfy_bridge as bridge
from sana_wan.loaders.sana_controlnet import controlnet_layout, load_sana_controlnet
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.schedulers import make_scheduler

NODES = sana_wan.NODE_CLASS_MAPPINGS
PROMPT = "A Cat holding a sign that says hello world"
NEGATIVE = "blurry, low quality"
WIDTH, HEIGHT, SEED, CFG = 96, 64, 1234, 4.5
CHI = inspect.signature(SanaControlNetPipeline.__call__).parameters["complex_human_instruction"].default


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("sana_controlnet"))
    models = tiny_sana_set()
    width = models["gemma"].config.hidden_size
    models["transformer"] = tiny_sana_transformer("base", seed=2, in_channels=32, out_channels=32,
                                                  caption_channels=width, num_layers=3)
    models["controlnet"] = tiny_sana_controlnet(seed=7, caption_channels=width)
    models["controlnet_b"] = tiny_sana_controlnet(seed=8, caption_channels=width)
    models["paths"] = write_sana_files(models, directory)
    models["controlnet_paths"] = write_controlnet_layouts(models["controlnet"], models["transformer"], directory)
    models["paths"]["controlnet_b"] = os.path.join(directory, "controlnet_b.safetensors")
    save_file(models["controlnet_b"].state_dict(), models["paths"]["controlnet_b"])
    models["image"] = torch.rand(1, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(5))
    return models


# ---------------------------------------------------------------------------------------------- loader


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_to_the_same_controlnet(models, layout):
    loaded, name = load_sana_controlnet(models["controlnet_paths"][layout])
    expected = models["controlnet"].state_dict()
    state = loaded.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert name == "Sana 64-wide ControlNet (2 blocks)"
    assert loaded.config.num_layers == 2 and loaded.config.interpolation_scale is None


def _meta(manifest_path: str) -> dict[str, torch.Tensor]:
    dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    with open(manifest_path) as f:
        tensors = json.load(f)["tensors"]
    return {k: torch.empty(shape, dtype=dtypes[dtype], device="meta") for k, (shape, dtype) in tensors.items()}


def test_real_layouts_map_completely_on_meta(manifests_dir):
    """The released 1600M ControlNet: the diffusers manifest, and the original file as the conversion script reads
    it (the Sana 1600M 1024px original layout plus the ControlNet keys, derived by inverting the script)."""
    diffusers = _meta(os.path.join(manifests_dir, "sana_controlnet_1600m_diffusers.json"))
    base = _meta(os.path.join(manifests_dir, "sana_1600m_1024px_original.json"))
    # SanaMS_1600M_P1_ControlNet_D7 at 1024 px, as scripts/convert_sana_controlnet_to_diffusers.py builds it.
    script = {"num_attention_heads": 70, "attention_head_dim": 32, "num_layers": 7, "num_cross_attention_heads": 20,
              "cross_attention_head_dim": 112, "cross_attention_dim": 2240, "caption_channels": 2304,
              "sample_size": 32, "interpolation_scale": None}
    original = controlnet_to_original(diffusers, {**script, "patch_size": 1}, base)
    for layout in (diffusers, original):
        config, converted = controlnet_layout(layout)
        assert {k: config[k] for k in script} == script
        with torch.device("meta"):
            expected = SanaControlNetModel(**config).state_dict()
        assert sorted(set(expected) ^ set(converted)) == []
        assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in expected.items()}


def test_wrong_family_files_are_refused_with_what_they_are(models, tmp_path):
    paths = models["paths"]
    with pytest.raises(ValueError, match=r"is a Sana transformer \(original layout\), not a Sana ControlNet"):
        NODES["SanaControlNetLoader"]().load(paths["transformer"], "fp32")
    with pytest.raises(ValueError, match="is a DC-AE VAE, not a Sana ControlNet"):
        NODES["SanaControlNetLoader"]().load(paths["vae"], "fp32")
    with pytest.raises(ValueError, match="is a Sana ControlNet, not a Sana transformer"):
        NODES["SanaTransformerLoader"]().load(models["controlnet_paths"]["original_pth"], "fp32")
    sd_controlnet = str(tmp_path / "control_v11p_sd15_canny.safetensors")
    save_file({"control_model.zero_convs.0.0.weight": torch.zeros(320, 320, 1, 1)}, sd_controlnet)
    with pytest.raises(ValueError, match=r"ControlNet for another model family \(SD / SDXL / Flux / SD3\), not a Sana"):
        NODES["SanaControlNetLoader"]().load(sd_controlnet, "fp32")


# ---------------------------------------------------------------------------------------------- nodes vs diffusers


def _conditioning(paths):
    (encoder,) = NODES["SanaTextEncoderLoader"]().load(paths["text_encoder"], "fp32")
    return NODES["SanaTextEncode"]().encode(encoder, PROMPT, NEGATIVE)


def _sample_and_decode(paths, positive, negative, steps, solver):
    (model,) = NODES["SanaTransformerLoader"]().load(paths["transformer"], "fp32")
    (vae,) = NODES["DCAELoader"]().load(paths["vae"], "fp32")
    latent, _, _ = NODES["EmptySanaLatent"]().generate(WIDTH, HEIGHT, 1, "off")
    (samples,) = NODES["SanaSampler"]().sample(model, positive, negative, latent, SEED, steps, CFG, 0.0, solver, 1.0)
    (image,) = NODES["DCAEDecode"]().decode(vae, samples, "off", 1024, 128)
    return image


def _apply(paths, controlnet_path, positive, negative, image, strength, start=0.0, end=1.0):
    (controlnet,) = NODES["SanaControlNetLoader"]().load(controlnet_path, "fp32")
    (vae,) = NODES["DCAELoader"]().load(paths["vae"], "fp32")
    return NODES["ApplySanaControlNet"]().apply(positive, negative, controlnet, vae, image, strength, start, end)


def _pipeline(models, scheduler, controlnet=None):
    return SanaControlNetPipeline(tokenizer=models["tokenizer"], text_encoder=models["gemma"].get_decoder(),
                                  vae=models["vae"], transformer=models["transformer"],
                                  controlnet=controlnet or models["controlnet"], scheduler=scheduler)


def _reference(models, strength, steps, solver):
    pipe = _pipeline(models, make_scheduler(solver, 3.0))
    pipe.set_progress_bar_config(disable=True)
    noise = comfy_noise((1, 32, HEIGHT // 32, WIDTH // 32), SEED)
    with torch.no_grad():
        image = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=CFG,
                     control_image=models["image"].permute(0, 3, 1, 2) * 2 - 1, controlnet_conditioning_scale=strength,
                     latents=noise, use_resolution_binning=False, output_type="pt").images
    return image.permute(0, 2, 3, 1)


@pytest.mark.parametrize(("strength", "solver"), [(1.0, "flow_dpmpp_2m"), (0.5, "flow_euler")])
def test_nodes_equal_sana_controlnet_pipeline(models, strength, solver):
    paths = models["paths"]
    positive, negative = _conditioning(paths)
    controlled = _apply(paths, models["controlnet_paths"]["original_pth"], positive, negative, models["image"],
                        strength)
    ours = _sample_and_decode(paths, *controlled, steps=5, solver=solver)
    reference = _reference(models, strength, steps=5, solver=solver)
    assert ours.shape == (1, HEIGHT, WIDTH, 3)
    assert (ours - reference).abs().max() <= 1e-4
    uncontrolled = _sample_and_decode(paths, positive, negative, steps=5, solver=solver)
    assert (ours - uncontrolled).abs().max() > 0.01, "the ControlNet must change the image for the test to mean much"
    assert "sana_controlnet" not in positive[0][1], "Apply must not change its input conditioning"


def _manual_reference(models, controls, steps):
    """SanaControlNetPipeline's denoising loop written out with the diffusers modules, for what the pipeline has no
    option for: a ControlNet on some steps only, two ControlNets (block outputs summed), one on the cond rows only.

    `controls`: (SanaControlNetModel, strength, steps it runs on, cond rows only).
    """
    pipe = _pipeline(models, FlowMatchEulerDiscreteScheduler(shift=3.0))
    vae, scheduler = pipe.vae, pipe.scheduler
    with torch.no_grad():
        embeds, mask, negative, negative_mask = pipe.encode_prompt(PROMPT, True, negative_prompt=NEGATIVE,
                                                                   complex_human_instruction=CHI)
        embeds, mask = torch.cat([negative, embeds]), torch.cat([negative_mask, mask])
        control = vae.encode(models["image"].permute(0, 3, 1, 2) * 2 - 1).latent * vae.config.scaling_factor
        scheduler.set_timesteps(steps)
        latents = comfy_noise((1, 32, HEIGHT // 32, WIDTH // 32), SEED)
        for i, t in enumerate(scheduler.timesteps):
            x_in, timestep = torch.cat([latents] * 2), t.expand(2)
            blocks = None
            for controlnet, strength, on_steps, cond_only in controls:
                if i not in on_steps:
                    continue
                out = controlnet(x_in, encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=timestep,
                                 controlnet_cond=torch.cat([control] * 2), conditioning_scale=strength,
                                 return_dict=False)[0]
                if cond_only:
                    out = [torch.cat([torch.zeros_like(o[:1]), o[1:]]) for o in out]
                blocks = out if blocks is None else [a + b for a, b in zip(blocks, out)]
            velocity = pipe.transformer(x_in, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                                        timestep=timestep, controlnet_block_samples=blocks, return_dict=False)[0]
            uncond, cond = velocity.chunk(2)
            latents = scheduler.step(uncond + CFG * (cond - uncond), t, latents, return_dict=False)[0]
        image = vae.decode(latents / vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def test_window_chaining_and_positive_only_equal_a_manual_diffusers_loop(models):
    """Euler, 5 steps, shift 3 starts its steps at sigma 1.0, 0.9004, 0.7511, 0.5030, 0.0089. ComfyUI's percents
    0.3 / 0.8 are sigma 3*0.7/(1+2*0.7) = 0.875 and 3*0.2/(1+2*0.2) = 0.4286, so the first ControlNet runs on steps
    2 and 3 only. A second ControlNet, applied to the positive prompt alone, runs on every step, cond rows only."""
    paths = models["paths"]
    positive, negative = _conditioning(paths)
    positive, negative = _apply(paths, models["controlnet_paths"]["diffusers_folder"], positive, negative,
                                models["image"], 1.0, 0.3, 0.8)
    positive_b, _ = _apply(paths, paths["controlnet_b"], positive, negative, models["image"], 0.7)
    ours = _sample_and_decode(paths, positive_b, negative, steps=5, solver="flow_euler")
    reference = _manual_reference(models, [(models["controlnet"], 1.0, {2, 3}, False),
                                           (models["controlnet_b"], 0.7, set(range(5)), True)], steps=5)
    assert (ours - reference).abs().max() <= 1e-4
    everywhere = _manual_reference(models, [(models["controlnet"], 1.0, set(range(5)), False),
                                            (models["controlnet_b"], 0.7, set(range(5)), True)], steps=5)
    assert (ours - everywhere).abs().max() > 0.01, "the window must matter for the test to mean much"


# ---------------------------------------------------------------------------------------------- bad input


def test_control_image_of_another_size_is_a_clear_error(models):
    paths = models["paths"]
    positive, negative = _conditioning(paths)
    square = torch.rand(1, HEIGHT, HEIGHT, 3)
    controlled = _apply(paths, models["controlnet_paths"]["diffusers_single"], positive, negative, square, 1.0)
    with pytest.raises(ValueError, match="control image is 64x64 but the latent is 96x64"):
        _sample_and_decode(paths, *controlled, steps=1, solver="flow_euler")
    with pytest.raises(ValueError, match="multiples of 32"):
        _apply(paths, models["controlnet_paths"]["diffusers_single"], positive, negative, torch.rand(1, 60, 96, 3), 1.0)


def test_controlnet_of_another_width_or_sampler_is_a_clear_error(models):
    paths = models["paths"]
    positive, negative = _conditioning(paths)
    (vae,) = NODES["DCAELoader"]().load(paths["vae"], "fp32")
    wider = bridge.ModelHandle(tiny_sana_controlnet(num_attention_heads=4, num_cross_attention_heads=2,
                                                    cross_attention_dim=128, caption_channels=64), "diffusion")
    controlled = NODES["ApplySanaControlNet"]().apply(positive, negative, wider, vae, models["image"], 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="does not fit the transformer: it is 128 wide"):
        _sample_and_decode(paths, *controlled, steps=1, solver="flow_euler")
    sprint = bridge.ModelHandle(tiny_sana_transformer("sprint", in_channels=32, out_channels=32, caption_channels=64),
                                "diffusion")
    latent = {"samples": torch.zeros(1, 32, 2, 3)}
    with pytest.raises(ValueError, match="Sana-Sprint Sampler does not support"):
        NODES["SanaSprintSampler"]().sample(sprint, controlled[0], latent, 0, 2, 4.5, 1.3, 1.5708)
    (model,) = NODES["SanaTransformerLoader"]().load(paths["transformer"], "fp32")
    with pytest.raises(ValueError, match="Expected a Sana ControlNet"):
        NODES["ApplySanaControlNet"]().apply(positive, negative, model, vae, models["image"], 1.0, 0.0, 1.0)


def test_apply_settings_are_checked_and_strength_zero_changes_nothing(models):
    assert "start_percent < end_percent" in NODES["ApplySanaControlNet"].VALIDATE_INPUTS(0.6, 0.2)
    assert NODES["ApplySanaControlNet"].VALIDATE_INPUTS(0.0, 1.0) is True
    paths = models["paths"]
    positive, negative = _conditioning(paths)
    same_positive, same_negative = _apply(paths, paths["controlnet_b"], positive, negative, models["image"], 0.0)
    assert same_positive is positive and same_negative is negative
