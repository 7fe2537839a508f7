"""Wan2.1 video-to-video through the pack's nodes equals diffusers' WanVideoToVideoPipeline on the same tiny weights.

Frames -> Wan VAE Encode -> Wan Sampler (denoise < 1) -> Wan VAE Decode, with the models loaded from the Comfy-Org
layouts, against the pipeline given the same frames (as PIL images, what `load_video` gives) and a CPU generator
seeded with the seed (its noise is ComfyUI's noise for that seed).

The two spell "how much to change" differently. The pipeline's `strength` s with `num_inference_steps` N runs the
last k = int(N * s) steps of an N-step schedule; the sampler's denoise follows ComfyUI (run `steps` steps, the last
ones of a schedule of round(steps / denoise) steps). So the pipeline's (N, s) is the sampler's steps = k and
denoise = k / N; the mapping is written out here, independently of the sampler.
"""

import pytest
import torch
from diffusers import WanPipeline, WanVideoToVideoPipeline
from sample_media import as_image_batch, moving_frames
from tiny_models import tiny_wan_set, write_wan_files

import sana_wan
from sana_wan.samplers.schedulers import make_scheduler

NODES = sana_wan.NODE_CLASS_MAPPINGS
PROMPT = "a fox runs through the snow"
NEGATIVE = "blurry, static"
WIDTH, HEIGHT, FRAMES, SEED, SHIFT, CFG = 48, 32, 9, 7, 8.0, 5.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    models = tiny_wan_set()
    models["paths"] = write_wan_files(models, str(tmp_path_factory.mktemp("wan_v2v_models")))
    return models


def input_frames():
    return moving_frames(WIDTH, HEIGHT, FRAMES)


def _run_nodes(paths, steps, denoise, solver):
    (model,) = NODES["WanTransformerLoader"]().load(paths["transformer"], "fp32")
    (encoder,) = NODES["WanTextEncoderLoader"]().load(paths["text_encoder"], "fp32")
    (vae,) = NODES["WanVAELoader"]().load(paths["vae"], "fp32")
    positive, negative = NODES["WanTextEncode"]().encode(encoder, PROMPT, NEGATIVE, False)
    (latent,) = NODES["WanVAEEncode"]().encode(vae, as_image_batch(input_frames()))
    (samples,) = NODES["WanSampler"]().sample(model, positive, negative, latent, SEED, steps, CFG, SHIFT, solver,
                                              "default", denoise)
    return NODES["WanVAEDecode"]().decode(vae, samples, "off", 256, 64)[0]


def _run_reference(models, num_inference_steps, strength, solver):
    components = {"tokenizer": models["tokenizer"], "text_encoder": models["umt5"],
                  "transformer": models["transformer"], "vae": models["vae"]}
    pipe = WanVideoToVideoPipeline(**components, scheduler=make_scheduler(solver, SHIFT))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        # WanPipeline's prompt encoding (the same code): the video-to-video pipeline's own calls ftfy unguarded,
        # an optional package this environment does not have.
        embeds, negative_embeds = WanPipeline(**components, scheduler=pipe.scheduler).encode_prompt(
            PROMPT, NEGATIVE, max_sequence_length=512)
        video = pipe(video=input_frames(), prompt_embeds=embeds, negative_prompt_embeds=negative_embeds,
                     height=HEIGHT, width=WIDTH,
                     num_inference_steps=num_inference_steps, strength=strength, guidance_scale=CFG,
                     generator=torch.Generator().manual_seed(SEED), output_type="pt").frames
    return video[0].permute(0, 2, 3, 1)


# (solver, the pipeline's num_inference_steps and strength); 10 x 0.55 is a case where denoise != strength.
CASES = [("flow_unipc", 10, 0.55), ("flow_euler", 8, 0.5)]


@pytest.mark.parametrize("solver, num_inference_steps, strength", CASES)
def test_nodes_equal_wan_video_to_video_pipeline(models, solver, num_inference_steps, strength):
    steps = int(num_inference_steps * strength)
    ours = _run_nodes(models["paths"], steps, steps / num_inference_steps, solver)
    reference = _run_reference(models, num_inference_steps, strength, solver)
    assert ours.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert (ours - reference).abs().max() <= 1e-4
    source = as_image_batch(input_frames())
    assert (ours - source).abs().mean() > 0.01, "the video must change (else denoise did nothing)"
    assert ours.std() > 0.01, "a flat video would make the comparison meaningless"


def test_bad_frames_are_clear_errors(models):
    (vae,) = NODES["WanVAELoader"]().load(models["paths"]["vae"], "fp32")
    frames = as_image_batch(input_frames())
    with pytest.raises(ValueError, match="4n\\+1"):
        NODES["WanVAEEncode"]().encode(vae, frames[:8])
    with pytest.raises(ValueError, match="multiples of 8"):
        NODES["WanVAEEncode"]().encode(vae, frames[:, :30])
