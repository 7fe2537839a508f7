"""Every solver with both families equals the diffusers pipeline step for step (same weights, conditioning, noise).

The README's support table points here for the solver cells; guidance methods are covered in test_guidance.py,
Sana-Sprint's sCM in test_sana_sprint.py.
"""

import pytest
import torch
from diffusers import SanaPipeline, WanPipeline
from tiny_sana import tiny_sana_transformer
from tiny_wan import tiny_wan_transformer

from sana_wan import comfy_bridge as bridge
from sana_wan.nodes.wan import WanSampler
from sana_wan.samplers import sana as sana_sampler
from sana_wan.samplers import wan as wan_sampler
from sana_wan.samplers.conditioning import make_conditioning
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.sana import SANA_LATENT_SCALE, sample_sana
from sana_wan.samplers.schedulers import SOLVERS, make_scheduler
from sana_wan.samplers.wan import batch_cond_uncond, sample_wan
from sana_wan.vae.wan import to_model_space, to_raw

STEPS, CFG, SEED = 4, 4.0, 17


def _embeds(batch, length, width, valid):
    generator = torch.Generator().manual_seed(valid)
    embeds = torch.randn(batch, length, width, generator=generator)
    mask = torch.zeros(batch, length, dtype=torch.int64)
    mask[:, :valid] = 1
    return embeds, mask


def _recording(monkeypatch, module, name):
    """Wrap module.name (a velocity factory) so every latent handed to the model is recorded, in order."""
    seen = []
    factory = getattr(module, name)

    def recording_factory(*args, **kwargs):
        predict = factory(*args, **kwargs)

        def recorded(x, *rest):
            seen.append(x.clone())
            return predict(x, *rest)

        return recorded

    monkeypatch.setattr(module, name, recording_factory)
    return seen


def _pipeline_trajectory():
    """A callback_on_step_end that records the latents after every scheduler step."""
    seen = []

    def callback(pipe, step, timestep, kwargs):
        seen.append(kwargs["latents"].clone())
        return {}

    return seen, callback


def _assert_same_trajectory(ours_inputs, ours_final, reference):
    """Our latent before each model call (after the first) and at the end equal the pipeline's after each step
    (all in the transformer's latent space)."""
    ours = ours_inputs[1:] + [ours_final]
    assert len(ours) == len(reference)
    for step, (mine, theirs) in enumerate(zip(ours, reference)):
        assert (mine - theirs).abs().max() <= 1e-5, f"step {step}"


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_sana_solver_equals_sana_pipeline(solver, monkeypatch):
    transformer = tiny_sana_transformer(seed=3, in_channels=32, out_channels=32, caption_channels=48)
    (pos, pos_mask), (neg, neg_mask) = _embeds(1, 10, 48, 7), _embeds(1, 10, 48, 2)
    noise = comfy_noise((1, 32, 2, 3), SEED)
    inputs = _recording(monkeypatch, sana_sampler, "sana_velocity")
    reference, callback = _pipeline_trajectory()
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                        scheduler=make_scheduler(solver, 3.0))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt_embeds=pos, prompt_attention_mask=pos_mask, negative_prompt=None,
                    negative_prompt_embeds=neg, negative_prompt_attention_mask=neg_mask, latents=noise.clone(),
                    height=64, width=96, num_inference_steps=STEPS, guidance_scale=CFG, use_resolution_binning=False,
                    output_type="latent", callback_on_step_end=callback).images
    with torch.inference_mode():
        ours = sample_sana(transformer, {"samples": torch.zeros(1, 32, 2, 3)}, make_conditioning(pos, pos_mask),
                           make_conditioning(neg, neg_mask), SEED, STEPS, CFG, 3.0, solver)
    assert (ours * SANA_LATENT_SCALE - expected).abs().max() <= 1e-5
    _assert_same_trajectory(inputs, ours * SANA_LATENT_SCALE, reference)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_wan_solver_equals_wan_pipeline(solver, monkeypatch):
    transformer = tiny_wan_transformer(seed=4, text_dim=32)
    (pos, pos_mask), (neg, neg_mask) = _embeds(1, 16, 32, 9), _embeds(1, 16, 32, 3)
    pos, neg = pos * pos_mask[..., None], neg * neg_mask[..., None]  # Wan's embeddings are zero past the prompt
    noise = comfy_noise((1, 16, 2, 4, 4), SEED)
    inputs = _recording(monkeypatch, wan_sampler, "wan_velocity")
    reference, callback = _pipeline_trajectory()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=None,
                       scheduler=make_scheduler(solver, 5.0))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=noise.clone(), height=32, width=32,
                    num_frames=5, num_inference_steps=STEPS, guidance_scale=CFG, output_type="latent",
                    callback_on_step_end=callback).frames
    with torch.inference_mode():
        ours = sample_wan(transformer, {"samples": torch.zeros(1, 16, 2, 4, 4)}, make_conditioning(pos, pos_mask),
                          make_conditioning(neg, neg_mask), SEED, STEPS, CFG, 5.0, solver)
    assert (ours - to_raw(expected)).abs().max() <= 1e-5
    _assert_same_trajectory(inputs, to_model_space(ours), reference)


@pytest.mark.parametrize("solver", ["flow_euler", "flow_unipc"])
def test_wan_cond_uncond_in_one_batch_equals_two_forwards(solver):
    transformer = tiny_wan_transformer(seed=4, text_dim=32)
    (pos, pos_mask), (neg, neg_mask) = _embeds(2, 16, 32, 9), _embeds(2, 16, 32, 3)
    args = ({"samples": torch.zeros(2, 16, 2, 4, 4)}, make_conditioning(pos, pos_mask), make_conditioning(neg, neg_mask),
            SEED, STEPS, CFG, 5.0, solver)
    with torch.inference_mode():
        separate = sample_wan(transformer, *args)
        batched = sample_wan(transformer, *args, batched=True)
    assert (batched - separate).abs().max() <= 1e-5


def test_the_wan_sampler_node_gives_the_same_latent_whatever_memory_is_free(monkeypatch):
    """One batch and two forwards round differently (batch 1 here): the node's choice must not follow the memory that
    happens to be free, or the same seed gives another video once another model is loaded."""
    model = bridge.ModelHandle(tiny_wan_transformer(seed=4, text_dim=32), "diffusion", family="wan")
    (pos, pos_mask), (neg, neg_mask) = _embeds(1, 16, 32, 9), _embeds(1, 16, 32, 3)
    latents = []
    for free in (0, 2**50):
        monkeypatch.setattr(bridge, "memory_fits", lambda required, device, free=free: required <= free)
        (samples,) = WanSampler().sample(model, make_conditioning(pos, pos_mask), make_conditioning(neg, neg_mask),
                                         {"samples": torch.zeros(1, 16, 2, 4, 4)}, SEED, STEPS, CFG, 5.0, "flow_unipc",
                                         "default", 1.0)
        latents.append(samples["samples"])
    assert torch.equal(*latents)


def test_cond_uncond_batching_depends_on_the_model_the_latent_and_the_device_only():
    gpu, gb = torch.device("cuda", 0), 2**30
    assert batch_cond_uncond(gpu, 3 * gb, 2 * gb, 80 * gb)  # Wan 1.3B at 832x480x81 on an 80 GB card
    assert not batch_cond_uncond(gpu, 28 * gb, 5 * gb, 24 * gb)  # 14B on a 24 GB card
    assert not batch_cond_uncond(torch.device("cpu"), 1, 1, 1024 * gb)
