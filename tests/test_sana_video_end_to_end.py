"""Sana-Video text- and image-to-video through the pack's nodes equals diffusers' SanaVideoPipeline and
SanaImageToVideoPipeline on the same tiny weights and noise.

The models are written in the layouts users have (NVlabs transformer .pth, Comfy-Org Gemma single file, Comfy-Org
Wan VAE) and loaded back by the loader nodes; the pipelines get the in-memory source models. Two prompts (a batch
of two videos), a non-square size and two solvers; the latents are compared (the pipeline's last step, made raw
with its own formula) and the decoded frames.
"""

import inspect

import pytest
import torch
from diffusers import SanaImageToVideoPipeline, SanaVideoPipeline
from tiny_gemma import tiny_gemma2, tokenizer_from_spm, train_spm_bytes, write_gemma_layouts
from tiny_sana_video import tiny_sana_video_transformer, write_sana_video_layouts
from tiny_wan_vae import tiny_wan_vae, write_wan_vae_layouts

import sana_wan
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.schedulers import make_scheduler

NODES = sana_wan.NODE_CLASS_MAPPINGS
PROMPTS = ["a red fox runs through fresh snow", "A small boat drifts on a calm lake at sunrise"]
NEGATIVE = "blurry, static"
MOTION = 30
WIDTH, HEIGHT, FRAMES, SEED, SHIFT, STEPS, CFG = 64, 32, 9, 7, 8.0, 5, 6.0
# The instruction the pipelines put before a prompt by default (the same in both).
PIPELINE_CHI = inspect.signature(SanaVideoPipeline.__call__).parameters["complex_human_instruction"].default
LATENT_SHAPE = (len(PROMPTS), 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("sana_video_models"))
    spm = train_spm_bytes()
    tokenizer = tokenizer_from_spm(spm)
    gemma = tiny_gemma2(len(tokenizer), seed=11)
    transformer = tiny_sana_video_transformer(seed=12, caption_channels=gemma.config.hidden_size)
    vae = tiny_wan_vae(seed=13)
    paths = {
        "transformer": write_sana_video_layouts(transformer, directory + "/video")["original_pth"],
        "text_encoder": write_gemma_layouts(gemma, tokenizer, spm, directory + "/gemma")["comfy_single"],
        "vae": write_wan_vae_layouts(vae, directory + "/vae")["comfy_safetensors"],
    }
    return {"tokenizer": tokenizer, "gemma": gemma, "transformer": transformer, "vae": vae, "paths": paths}


@pytest.fixture(scope="module")
def start_image():
    generator = torch.Generator().manual_seed(5)
    return torch.rand(1, HEIGHT, WIDTH, 3, generator=generator)


def _run_nodes(paths, solver, start_image=None):
    (model,) = NODES["SanaVideoTransformerLoader"]().load(paths["transformer"], "fp32")
    (encoder,) = NODES["SanaTextEncoderLoader"]().load(paths["text_encoder"], "fp32")
    (vae,) = NODES["WanVAELoader"]().load(paths["vae"], "fp32")
    positive, negative = NODES["SanaVideoTextEncode"]().encode(encoder, "\n".join(PROMPTS), NEGATIVE, MOTION, True)
    if start_image is None:
        (latent,) = NODES["EmptyWanLatentVideo"]().generate(WIDTH, HEIGHT, FRAMES, 1)
    else:
        (latent,) = NODES["SanaVideoImageToVideo"]().generate(vae, start_image, WIDTH, HEIGHT, FRAMES, 1)
    (samples,) = NODES["SanaVideoSampler"]().sample(model, positive, negative, latent, SEED, STEPS, CFG, 0.0, solver,
                                                    "default", 1.0)
    frames, _ = NODES["WanVAEDecode"]().decode(vae, samples, "off", 256, 64)
    return samples["samples"], frames


def _run_reference(models, solver, start_image=None):
    parts = dict(tokenizer=models["tokenizer"], text_encoder=models["gemma"].get_decoder(), vae=models["vae"],
                 transformer=models["transformer"], scheduler=make_scheduler(solver, SHIFT))
    pipe = SanaVideoPipeline(**parts) if start_image is None else SanaImageToVideoPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    last = {}

    def keep_latents(pipeline, step, timestep, tensors):
        last["latents"] = tensors["latents"]
        return {}

    kwargs = {} if start_image is None else {"image": start_image.permute(0, 3, 1, 2)}
    with torch.no_grad():
        video = pipe(prompt=[p + f" motion score: {MOTION}." for p in PROMPTS], negative_prompt=NEGATIVE,
                     height=HEIGHT, width=WIDTH, frames=FRAMES, num_inference_steps=STEPS, guidance_scale=CFG,
                     latents=comfy_noise(LATENT_SHAPE, SEED), use_resolution_binning=False, output_type="pt",
                     callback_on_step_end=keep_latents, **kwargs).frames
    # The pipeline's own way from its latents to the VAE's (pipeline_sana_video.py, before vae.decode).
    mean = torch.tensor(models["vae"].config.latents_mean).view(1, -1, 1, 1, 1)
    std_inv = 1.0 / torch.tensor(models["vae"].config.latents_std).view(1, -1, 1, 1, 1)
    return last["latents"] / std_inv + mean, video.permute(0, 1, 3, 4, 2).flatten(0, 1)


def _assert_equal(ours, reference):
    (latents, frames), (ref_latents, ref_frames) = ours, reference
    assert latents.shape == LATENT_SHAPE and frames.shape == (len(PROMPTS) * FRAMES, HEIGHT, WIDTH, 3)
    assert (latents - ref_latents).abs().max() <= 1e-5
    assert (frames - ref_frames).abs().max() <= 1e-4
    assert frames.std() > 0.01, "flat videos would make the comparison meaningless"
    assert (frames[:FRAMES] - frames[FRAMES:]).abs().max() > 0.01, "each prompt makes its own video"


@pytest.mark.parametrize("solver", ["flow_dpmpp_2m", "flow_euler"])
def test_text_to_video_equals_sana_video_pipeline(models, solver):
    _assert_equal(_run_nodes(models["paths"], solver), _run_reference(models, solver))


@pytest.mark.parametrize("solver", ["flow_euler", "flow_dpmpp_2m"])
def test_image_to_video_equals_sana_image_to_video_pipeline(models, start_image, solver):
    ours = _run_nodes(models["paths"], solver, start_image)
    _assert_equal(ours, _run_reference(models, solver, start_image))
    latents = ours[0]
    assert (latents[0, :, 0] - latents[1, :, 0]).abs().max() == 0, "both videos start from the same image"


def test_text_encode_equals_pipeline_encode_prompt(models):
    (encoder,) = NODES["SanaTextEncoderLoader"]().load(models["paths"]["text_encoder"], "fp32")
    positive, negative = NODES["SanaVideoTextEncode"]().encode(encoder, PROMPTS[0], NEGATIVE, 0, False)
    pipe = SanaVideoPipeline(tokenizer=models["tokenizer"], text_encoder=models["gemma"].get_decoder(), vae=None,
                             transformer=None, scheduler=None)
    with torch.no_grad():
        embeds, mask, negative_embeds, negative_mask = pipe.encode_prompt(
            PROMPTS[0], True, negative_prompt=NEGATIVE, device="cpu", complex_human_instruction=PIPELINE_CHI)
    assert torch.equal(positive[0][0], embeds) and torch.equal(positive[0][1]["attention_mask"], mask)
    assert torch.equal(negative[0][0], negative_embeds)
    assert torch.equal(negative[0][1]["attention_mask"], negative_mask)


def test_bad_inputs_are_clear_errors(models, start_image):
    i2v = NODES["SanaVideoImageToVideo"]
    assert "4n+1" in i2v.VALIDATE_INPUTS(832, 480, 80, 1)
    assert "multiple of 16" in i2v.VALIDATE_INPUTS(840, 480, 81, 1)
    assert i2v.VALIDATE_INPUTS(832, 480, 81, 1) is True
    (vae,) = NODES["WanVAELoader"]().load(models["paths"]["vae"], "fp32")
    with pytest.raises(ValueError, match="start_image must be an IMAGE"):
        i2v().generate(vae, start_image[0], WIDTH, HEIGHT, FRAMES, 1)
    (model,) = NODES["SanaVideoTransformerLoader"]().load(models["paths"]["transformer"], "fp32")
    sampler = NODES["SanaVideoSampler"]()
    video = {"samples": torch.zeros(1, 16, 3, 4, 8)}
    with pytest.raises(ValueError, match="steps"):
        sampler.sample(model, [], [], video, 0, 0, CFG, 0.0, "flow_euler", "default", 1.0)
    with pytest.raises(ValueError, match="Wan2.1 video latent"):
        sampler.sample(model, [], [], {"samples": torch.zeros(1, 32, 2, 2)}, 0, 2, CFG, 0.0, "flow_euler", "default",
                       1.0)
    with pytest.raises(ValueError, match="no frame left to generate"):
        sampler.sample(model, [], [], {"samples": torch.zeros(1, 16, 1, 4, 8), "start_latent_frames": 1}, 0, 2, CFG,
                       0.0, "flow_euler", "default", 1.0)
    wide = [[torch.zeros(1, 5, 4096), {"attention_mask": torch.ones(1, 5)}]]
    with pytest.raises(ValueError, match="Gemma-2"):
        sampler.sample(model, wide, wide, video, 0, 2, CFG, 0.0, "flow_euler", "default", 1.0)
    (pag,) = NODES["GuidancePAG"]().build(3.0, "1", CFG, 0.0, 0.0, 1.0)
    (encoder,) = NODES["SanaTextEncoderLoader"]().load(models["paths"]["text_encoder"], "fp32")
    positive, negative = NODES["SanaVideoTextEncode"]().encode(encoder, PROMPTS[0], "", MOTION, False)
    with pytest.raises(ValueError, match="PAG guidance is for the Sana sampler"):
        sampler.sample(model, positive, negative, video, 0, 2, CFG, 0.0, "flow_euler", "default", 1.0, pag)
    with pytest.raises(ValueError, match="is a Wan VAE"):
        NODES["SanaVideoTransformerLoader"]().load(models["paths"]["vae"], "fp32")
