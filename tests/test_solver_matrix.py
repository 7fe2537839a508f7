"""Every solver with both families equals the diffusers pipeline (same weights, conditioning and noise).

The README's support table points here for the solver cells; guidance methods are covered in test_guidance.py,
Sana-Sprint's sCM in test_sana_sprint.py.
"""

import pytest
import torch
from diffusers import SanaPipeline, WanPipeline
from tiny_sana import tiny_sana_transformer
from tiny_wan import tiny_wan_transformer

from sana_wan.samplers.conditioning import make_conditioning
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.sana import SANA_LATENT_SCALE, sample_sana
from sana_wan.samplers.schedulers import SOLVERS, make_scheduler
from sana_wan.samplers.wan import sample_wan
from sana_wan.vae.wan import to_raw

STEPS, CFG, SEED = 4, 4.0, 17


def _embeds(batch, length, width, valid):
    generator = torch.Generator().manual_seed(valid)
    embeds = torch.randn(batch, length, width, generator=generator)
    mask = torch.zeros(batch, length, dtype=torch.int64)
    mask[:, :valid] = 1
    return embeds, mask


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_sana_solver_equals_sana_pipeline(solver):
    transformer = tiny_sana_transformer(seed=3, in_channels=32, out_channels=32, caption_channels=48)
    (pos, pos_mask), (neg, neg_mask) = _embeds(1, 10, 48, 7), _embeds(1, 10, 48, 2)
    noise = comfy_noise((1, 32, 2, 3), SEED)
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                        scheduler=make_scheduler(solver, 3.0))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt_embeds=pos, prompt_attention_mask=pos_mask, negative_prompt=None,
                    negative_prompt_embeds=neg, negative_prompt_attention_mask=neg_mask, latents=noise.clone(),
                    height=64, width=96, num_inference_steps=STEPS, guidance_scale=CFG, use_resolution_binning=False,
                    output_type="latent").images
    with torch.inference_mode():
        ours = sample_sana(transformer, {"samples": torch.zeros(1, 32, 2, 3)}, make_conditioning(pos, pos_mask),
                           make_conditioning(neg, neg_mask), SEED, STEPS, CFG, 3.0, solver)
    assert (ours * SANA_LATENT_SCALE - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_wan_solver_equals_wan_pipeline(solver):
    transformer = tiny_wan_transformer(seed=4, text_dim=32)
    (pos, pos_mask), (neg, neg_mask) = _embeds(1, 16, 32, 9), _embeds(1, 16, 32, 3)
    pos, neg = pos * pos_mask[..., None], neg * neg_mask[..., None]  # Wan's embeddings are zero past the prompt
    noise = comfy_noise((1, 16, 2, 4, 4), SEED)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=None,
                       scheduler=make_scheduler(solver, 5.0))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=noise.clone(), height=32, width=32,
                    num_frames=5, num_inference_steps=STEPS, guidance_scale=CFG, output_type="latent").frames
    with torch.inference_mode():
        ours = sample_wan(transformer, {"samples": torch.zeros(1, 16, 2, 4, 4)}, make_conditioning(pos, pos_mask),
                          make_conditioning(neg, neg_mask), SEED, STEPS, CFG, 5.0, solver)
    assert (ours - to_raw(expected)).abs().max() <= 1e-5


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
