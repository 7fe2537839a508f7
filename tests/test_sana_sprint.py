"""Sana-Sprint through the pack's nodes equals diffusers' SanaSprintPipeline on the same tiny weights.

The Sprint transformer is written as an original .pth and loaded back by the loader node; the reference pipeline
gets the in-memory models. The pipeline gets the seed's ComfyUI noise as `latents` and, for the fresh noise of each
step, a CPU generator seeded with the seed and advanced past that initial noise: the stream the sampler documents.
"""

import pytest
import torch
from diffusers import SanaSprintPipeline, SCMScheduler
from tiny_models import tiny_sana_set, tiny_sana_transformer, write_sana_files

import sana_wan
from sana_wan import comfy_bridge as bridge
from sana_wan.nodes.sprint import NODE_CLASS_MAPPINGS as SPRINT_NODES
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.scm import sample_sana_sprint

NODES = {**sana_wan.NODE_CLASS_MAPPINGS, **SPRINT_NODES}
PROMPT = "A Cat holding a sign that says hello world"
WIDTH, HEIGHT, SEED, GUIDANCE = 96, 64, 1234, 4.5
SHAPE = (1, 32, HEIGHT // 32, WIDTH // 32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    models = tiny_sana_set("sprint")
    models["paths"] = write_sana_files(models, str(tmp_path_factory.mktemp("sprint_models")))
    (models["handle"],) = NODES["SanaTransformerLoader"]().load(models["paths"]["transformer"], "fp32")
    (encoder,) = NODES["SanaTextEncoderLoader"]().load(models["paths"]["text_encoder"], "fp32")
    models["positive"] = NODES["SanaTextEncode"]().encode(encoder, PROMPT, "")[0]
    return models


def _run_nodes(models, steps):
    (vae,) = NODES["DCAELoader"]().load(models["paths"]["vae"], "fp32")
    latent, _, _ = NODES["EmptySanaLatent"]().generate(WIDTH, HEIGHT, 1, "off")
    (samples,) = NODES["SanaSprintSampler"]().sample(models["handle"], models["positive"], latent, SEED, steps,
                                                     GUIDANCE, 1.3, 1.5708)
    (image,) = NODES["DCAEDecode"]().decode(vae, samples, "off", 1024, 128)
    return image


def _seeded_stream():
    """ComfyUI's noise for SEED and a CPU generator positioned right after drawing it."""
    generator = torch.Generator().manual_seed(SEED)
    noise = comfy_noise(SHAPE, SEED)
    assert torch.equal(torch.randn(SHAPE, generator=generator), noise)
    return noise, generator


def _run_reference(models, steps, output_type="pt"):
    pipe = SanaSprintPipeline(tokenizer=models["tokenizer"], text_encoder=models["gemma"].get_decoder(),
                              vae=models["vae"], transformer=models["transformer"], scheduler=SCMScheduler())
    pipe.set_progress_bar_config(disable=True)
    noise, generator = _seeded_stream()
    with torch.no_grad():
        out = pipe(prompt=PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=steps, guidance_scale=GUIDANCE,
                   intermediate_timesteps=1.3 if steps == 2 else None, latents=noise, generator=generator,
                   use_resolution_binning=False, output_type=output_type).images
    return out if output_type == "latent" else out.permute(0, 2, 3, 1)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_nodes_equal_sana_sprint_pipeline(models, steps):
    ours = _run_nodes(models, steps)
    reference = _run_reference(models, steps)
    assert ours.shape == (1, HEIGHT, WIDTH, 3) and ours.dtype == torch.float32
    assert (ours - reference).abs().max() <= 1e-4
    assert ours.std() > 0.01, "a flat image would make the comparison meaningless"


def test_raw_latents_and_callback(models):
    """LATENT holds raw DC-AE latents: the pipeline's (model-space) latents / 0.41407; x0 goes to the callback."""
    calls = []
    with torch.no_grad():
        ours = sample_sana_sprint(models["transformer"], {"samples": torch.zeros(SHAPE)}, models["positive"], SEED, 2,
                                  GUIDANCE, callback=lambda step, total, x0: calls.append((step, total, x0)))
    reference = _run_reference(models, 2, output_type="latent")
    assert (ours - reference / 0.41407).abs().max() <= 1e-5
    assert [(step, total) for step, total, _ in calls] == [(1, 2), (2, 2)]
    assert torch.equal(calls[-1][2] / 0.41407, ours)


def test_bad_inputs_are_clear_errors(models):
    sampler, latent = NODES["SanaSprintSampler"](), {"samples": torch.zeros(SHAPE)}
    width = models["gemma"].config.hidden_size
    base = bridge.ModelHandle(tiny_sana_transformer("base", in_channels=32, out_channels=32, caption_channels=width),
                              "diffusion")
    with pytest.raises(ValueError, match="needs a Sana-Sprint model"):
        sampler.sample(base, models["positive"], latent, SEED, 2, GUIDANCE, 1.3, 1.5708)
    for steps, guidance, message in ((5, GUIDANCE, "steps"), (0, GUIDANCE, "steps"), (2, float("nan"), "guidance")):
        with pytest.raises(ValueError, match=message):
            sampler.sample(models["handle"], models["positive"], latent, SEED, steps, guidance, 1.3, 1.5708)
    with pytest.raises(ValueError, match="intermediate_timestep"):
        sampler.sample(models["handle"], models["positive"], latent, SEED, 2, GUIDANCE, 1.6, 1.5708)
    with pytest.raises(ValueError, match="a Sana model needs"):
        sampler.sample(models["handle"], models["positive"], {"samples": torch.zeros(1, 16, 2, 3)}, SEED, 2,
                       GUIDANCE, 1.3, 1.5708)
