"""Sana text-to-image through the pack's nodes equals diffusers' SanaPipeline on the same tiny weights.

The models are written to disk in the layouts users have (original transformer .pth, Comfy-Org Gemma single file,
original mit-han-lab DC-AE) and loaded back by the loader nodes; the reference pipeline gets the in-memory source
models. Same prompt, same seed's noise, same settings: the images must agree to float32 rounding.
"""

import pytest
import torch
from diffusers import SanaPipeline
from tiny_models import tiny_sana_set, write_sana_files

import sana_wan
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.schedulers import make_scheduler

NODES = sana_wan.NODE_CLASS_MAPPINGS
PROMPT = "A Cat holding a sign that says hello world"
NEGATIVE = "blurry, low quality"
WIDTH, HEIGHT, SEED = 96, 64, 1234


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    models = tiny_sana_set()
    models["paths"] = write_sana_files(models, str(tmp_path_factory.mktemp("sana_models")))
    return models


def _run_nodes(paths, steps, cfg, solver):
    (model,) = NODES["SanaTransformerLoader"]().load(paths["transformer"], "fp32")
    (encoder,) = NODES["SanaTextEncoderLoader"]().load(paths["text_encoder"], "fp32")
    (vae,) = NODES["DCAELoader"]().load(paths["vae"], "fp32")
    positive, negative = NODES["SanaTextEncode"]().encode(encoder, PROMPT, NEGATIVE)
    latent, width, height = NODES["EmptySanaLatent"]().generate(WIDTH, HEIGHT, 1, "off")
    (samples,) = NODES["SanaSampler"]().sample(model, positive, negative, latent, SEED, steps, cfg, 0.0, solver, 1.0)
    (image,) = NODES["DCAEDecode"]().decode(vae, samples, "off", 1024, 128)
    return image


def _run_reference(models, steps, cfg, solver):
    pipe = SanaPipeline(tokenizer=models["tokenizer"], text_encoder=models["gemma"].get_decoder(), vae=models["vae"],
                        transformer=models["transformer"], scheduler=make_scheduler(solver, 3.0))
    pipe.set_progress_bar_config(disable=True)
    noise = comfy_noise((1, 32, HEIGHT // 32, WIDTH // 32), SEED)
    with torch.no_grad():
        image = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_inference_steps=steps,
                     guidance_scale=cfg, latents=noise, use_resolution_binning=False, clean_caption=False,
                     output_type="pt").images
    return image.permute(0, 2, 3, 1)


@pytest.mark.parametrize("solver", ["flow_euler", "flow_dpmpp_2m"])
def test_nodes_equal_sana_pipeline(models, solver):
    ours = _run_nodes(models["paths"], steps=6, cfg=4.5, solver=solver)
    reference = _run_reference(models, steps=6, cfg=4.5, solver=solver)
    assert ours.shape == (1, HEIGHT, WIDTH, 3) and ours.dtype == torch.float32
    assert (ours - reference).abs().max() <= 1e-4
    assert ours.std() > 0.01, "a flat image would make the comparison meaningless"


def test_bad_inputs_are_clear_errors(models):
    with pytest.raises(ValueError, match="multiple of 32"):
        NODES["EmptySanaLatent"]().generate(1000, 1024, 1, "off")
    assert "use 992 or 1024" in NODES["EmptySanaLatent"].VALIDATE_INPUTS(1000, 1024, 1, "off")
    assert NODES["EmptySanaLatent"].VALIDATE_INPUTS(1024, 1024, 1, "off") is True
    (model,) = NODES["SanaTransformerLoader"]().load(models["paths"]["transformer"], "fp32")
    latent = {"samples": torch.zeros(1, 32, 2, 3)}
    for steps, cfg, message in ((0, 4.5, "steps"), (4, float("nan"), "cfg")):
        with pytest.raises(ValueError, match=message):
            NODES["SanaSampler"]().sample(model, [], [], latent, 0, steps, cfg, 0.0, "flow_euler", 1.0)
    with pytest.raises(ValueError, match="Gemma-2"):
        NODES["SanaTextEncoderLoader"]().load(models["paths"]["transformer"], "fp32")
    with pytest.raises(ValueError, match="DC-AE"):
        NODES["DCAELoader"]().load(models["paths"]["transformer"], "fp32")
