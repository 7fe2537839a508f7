"""Sana and Sana-Sprint image-to-image through the pack's nodes equal diffusers on the same tiny weights.

Image -> DC-AE Encode -> Sana Sampler / Sana-Sprint Sampler (denoise < 1) -> DC-AE Decode, with the models loaded
from the layouts users have, against the same image as a PIL picture.

- Sana-Sprint: diffusers' SanaSprintImg2ImgPipeline.
- Sana: diffusers has no img2img pipeline for the plain Sana model. The reference is SanaPipeline's own loop started
  from the noised image latent, set up the way diffusers' flow-matching img2img pipelines do it
  (StableDiffusion3Img2ImgPipeline: `get_timesteps` keeps the last steps of the schedule and sets the scheduler's
  begin index there; the image latent is noised to that step's level by the scheduler). That is what
  `_img2img_timesteps` below does inside SanaPipeline's call.

Both pipelines take `strength` s with `num_inference_steps` N and run the last N - int(N - N * s) steps of an N-step
schedule; the samplers' denoise follows ComfyUI (run `steps` steps, the last ones of a schedule of round(steps /
denoise) steps). So the pipelines' (N, s) is the samplers' steps = k = N - int(N - N * s) and denoise = k / N; the
mapping is written out here, independently of the samplers.
"""

import pytest
import torch
from diffusers import SanaPipeline, SanaSprintImg2ImgPipeline, SCMScheduler
from diffusers.pipelines.sana import pipeline_sana
from sample_media import as_image_batch, moving_frames
from tiny_models import tiny_sana_set, write_sana_files

import sana_wan
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.schedulers import make_scheduler

NODES = sana_wan.NODE_CLASS_MAPPINGS
PROMPT = "A Cat holding a sign that says hello world"
NEGATIVE = "blurry, low quality"
WIDTH, HEIGHT, SEED, SHIFT, CFG, GUIDANCE = 96, 64, 1234, 3.0, 4.5, 4.5
SHAPE = (1, 32, HEIGHT // 32, WIDTH // 32)
RETRIEVE_TIMESTEPS = pipeline_sana.retrieve_timesteps  # SanaPipeline's own, before the tests patch it


def input_image():
    return moving_frames(WIDTH, HEIGHT, 1, seed=3)[0]


def steps_and_denoise(num_inference_steps: int, strength: float) -> tuple[int, float]:
    """The samplers' (steps, denoise) for the pipelines' (num_inference_steps, strength)."""
    steps = num_inference_steps - int(max(num_inference_steps - num_inference_steps * strength, 0))
    return steps, steps / num_inference_steps


def _sana_set(variant, tmp_path_factory):
    models = tiny_sana_set(variant)
    models["paths"] = write_sana_files(models, str(tmp_path_factory.mktemp(f"sana_i2i_{variant}")))
    models["nodes"] = _encode_and_load(models["paths"])
    return models


@pytest.fixture(scope="module")
def sana(tmp_path_factory):
    return _sana_set("base", tmp_path_factory)


@pytest.fixture(scope="module")
def sprint(tmp_path_factory):
    return _sana_set("sprint", tmp_path_factory)


def _encode_and_load(paths):
    (model,) = NODES["SanaTransformerLoader"]().load(paths["transformer"], "fp32")
    (encoder,) = NODES["SanaTextEncoderLoader"]().load(paths["text_encoder"], "fp32")
    (vae,) = NODES["DCAELoader"]().load(paths["vae"], "fp32")
    (latent,) = NODES["DCAEEncode"]().encode(vae, as_image_batch([input_image()]))
    return model, encoder, vae, latent


def _decode(vae, samples):
    return NODES["DCAEDecode"]().decode(vae, samples, "off", 1024, 128)[0]


# ------------------------------------------------------------------------------------------------ Sana


def _run_sana_nodes(loaded, steps, denoise, solver):
    model, encoder, vae, latent = loaded
    positive, negative = NODES["SanaTextEncode"]().encode(encoder, PROMPT, NEGATIVE)
    (samples,) = NODES["SanaSampler"]().sample(model, positive, negative, latent, SEED, steps, CFG, SHIFT, solver,
                                               denoise)
    return _decode(vae, samples)


def _img2img_timesteps(strength):
    """retrieve_timesteps followed by StableDiffusion3Img2ImgPipeline.get_timesteps (written out as it is there)."""
    def timesteps(scheduler, num_inference_steps, device, *args, **kwargs):
        timesteps, num_inference_steps = RETRIEVE_TIMESTEPS(scheduler, num_inference_steps, device, *args, **kwargs)
        init_timestep = min(num_inference_steps * strength, num_inference_steps)
        t_start = int(max(num_inference_steps - init_timestep, 0))
        timesteps = scheduler.timesteps[t_start * scheduler.order:]
        scheduler.set_begin_index(t_start * scheduler.order)
        return timesteps, num_inference_steps - t_start

    return timesteps


def _run_sana_reference(models, num_inference_steps, strength, solver, monkeypatch):
    pipe = SanaPipeline(tokenizer=models["tokenizer"], text_encoder=models["gemma"].get_decoder(), vae=models["vae"],
                        transformer=models["transformer"], scheduler=make_scheduler(solver, SHIFT))
    pipe.set_progress_bar_config(disable=True)
    monkeypatch.setattr(pipeline_sana, "retrieve_timesteps", _img2img_timesteps(strength))
    # The noised start, as the img2img pipelines make it: the image latent (vae.encode(...).latent * scaling_factor)
    # noised by the scheduler to the first kept step.
    scheduler = make_scheduler(solver, SHIFT)
    first = _img2img_timesteps(strength)(scheduler, num_inference_steps, "cpu")[0][:1]
    pixels = pipe.image_processor.preprocess(input_image(), height=HEIGHT, width=WIDTH)
    with torch.no_grad():
        image_latents = models["vae"].encode(pixels).latent * models["vae"].config.scaling_factor
        noise = comfy_noise(SHAPE, SEED)
        if hasattr(scheduler, "add_noise"):  # as WanVideoToVideoPipeline picks between the two
            latents = scheduler.add_noise(image_latents, noise, first)
        else:
            latents = scheduler.scale_noise(image_latents, first, noise)
        image = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH,
                     num_inference_steps=num_inference_steps, guidance_scale=CFG, latents=latents,
                     use_resolution_binning=False, clean_caption=False, output_type="pt").images
    return image.permute(0, 2, 3, 1)


# (solver, the reference's num_inference_steps and strength); 6 x 0.55 is a case where denoise (4/6) != strength.
SANA_CASES = [("flow_dpmpp_2m", 6, 0.55), ("flow_euler", 4, 0.5), ("flow_heun", 4, 0.5)]


@pytest.mark.parametrize("solver, num_inference_steps, strength", SANA_CASES)
def test_sana_image_to_image_equals_the_diffusers_img2img_loop(sana, monkeypatch, solver, num_inference_steps,
                                                               strength):
    ours = _run_sana_nodes(sana["nodes"], *steps_and_denoise(num_inference_steps, strength), solver)
    reference = _run_sana_reference(sana, num_inference_steps, strength, solver, monkeypatch)
    assert ours.shape == (1, HEIGHT, WIDTH, 3)
    assert (ours - reference).abs().max() <= 1e-4
    assert (ours - as_image_batch([input_image()])).abs().mean() > 0.01, "the image must change"
    assert ours.std() > 0.01, "a flat image would make the comparison meaningless"


# ------------------------------------------------------------------------------------------------ Sana-Sprint


def _run_sprint_nodes(loaded, steps, denoise):
    model, encoder, vae, latent = loaded
    positive, _ = NODES["SanaTextEncode"]().encode(encoder, PROMPT, "")
    (samples,) = NODES["SanaSprintSampler"]().sample(model, positive, latent, SEED, steps, GUIDANCE, 1.3, 1.5708,
                                                     denoise)
    return _decode(vae, samples)


def _run_sprint_reference(models, num_inference_steps, strength):
    pipe = SanaSprintImg2ImgPipeline(tokenizer=models["tokenizer"], text_encoder=models["gemma"].get_decoder(),
                                     vae=models["vae"], transformer=models["transformer"], scheduler=SCMScheduler())
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        image = pipe(prompt=PROMPT, image=input_image(), strength=strength, height=HEIGHT, width=WIDTH,
                     num_inference_steps=num_inference_steps, guidance_scale=GUIDANCE,
                     intermediate_timesteps=1.3 if num_inference_steps == 2 else None,
                     generator=torch.Generator().manual_seed(SEED), use_resolution_binning=False,
                     clean_caption=False, output_type="pt").images
    return image.permute(0, 2, 3, 1)


# The reference's num_inference_steps and strength: 1 step from the intermediate time; 3 of 4 steps (where denoise
# 0.75 != strength 0.7).
SPRINT_CASES = [(2, 0.5), (4, 0.7)]


@pytest.mark.parametrize("num_inference_steps, strength", SPRINT_CASES)
def test_sprint_image_to_image_equals_sana_sprint_img2img_pipeline(sprint, num_inference_steps, strength):
    ours = _run_sprint_nodes(sprint["nodes"], *steps_and_denoise(num_inference_steps, strength))
    reference = _run_sprint_reference(sprint, num_inference_steps, strength)
    assert ours.shape == (1, HEIGHT, WIDTH, 3)
    assert (ours - reference).abs().max() <= 1e-4
    assert (ours - as_image_batch([input_image()])).abs().mean() > 0.01, "the image must change"
    assert ours.std() > 0.01, "a flat image would make the comparison meaningless"


def test_sprint_denoise_below_one_uses_the_image_and_one_ignores_it(sprint):
    model, encoder, _, latent = sprint["nodes"]
    positive, _ = NODES["SanaTextEncode"]().encode(encoder, PROMPT, "")
    sampler, empty = NODES["SanaSprintSampler"](), {"samples": torch.zeros_like(latent["samples"])}

    def run(source, denoise):
        return sampler.sample(model, positive, source, SEED, 1, GUIDANCE, 1.3, 1.5708, denoise)[0]["samples"]

    assert torch.equal(run(latent, 1.0), run(empty, 1.0)), "at denoise 1 the input latent must not matter"
    assert (run(latent, 0.5) - run(empty, 0.5)).abs().max() > 0.1


def test_bad_denoise_is_a_clear_error(sprint):
    model, latent = sprint["nodes"][0], {"samples": torch.zeros(SHAPE)}
    for denoise in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="denoise"):
            NODES["SanaSprintSampler"]().sample(model, [], latent, SEED, 1, GUIDANCE, 1.3, 1.5708, denoise)
    with pytest.raises(ValueError, match="intermediate_timestep .* 2-step schedule"):  # 1 step of 2 uses it
        NODES["SanaSprintSampler"]().sample(model, [], latent, SEED, 1, GUIDANCE, 1.6, 1.5708, 0.5)
