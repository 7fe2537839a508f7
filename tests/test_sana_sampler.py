"""Sana sampling equals diffusers' SanaPipeline on the same weights, conditioning and noise."""

import pytest
import torch
from diffusers import SanaPipeline, SanaTransformer2DModel

from sana_wan.samplers.conditioning import make_conditioning
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.sana import SANA_LATENT_SCALE, sample_sana
from sana_wan.samplers.schedulers import make_scheduler


@pytest.fixture(scope="module")
def transformer():
    torch.manual_seed(0)
    model = SanaTransformer2DModel(
        in_channels=32, out_channels=32, num_attention_heads=2, attention_head_dim=32, num_layers=2,
        num_cross_attention_heads=1, cross_attention_head_dim=64, cross_attention_dim=64, caption_channels=48,
        sample_size=8,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def _conds(batch=1):
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(batch, 12, 48, generator=g)
    pos_mask = torch.ones(batch, 12, dtype=torch.int64)
    pos_mask[:, 7:] = 0
    neg = torch.randn(batch, 12, 48, generator=g)
    neg_mask = torch.ones(batch, 12, dtype=torch.int64)
    neg_mask[:, 3:] = 0
    return pos, pos_mask, neg, neg_mask


def _reference(transformer, solver, shift, steps, cfg, noise, conds):
    pos, pos_mask, neg, neg_mask = conds
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                        scheduler=make_scheduler(solver, shift))
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt_embeds=pos, prompt_attention_mask=pos_mask, negative_prompt_embeds=neg,
        negative_prompt=None, negative_prompt_attention_mask=neg_mask, latents=noise.clone(), height=noise.shape[2] * 32,
        width=noise.shape[3] * 32, num_inference_steps=steps, guidance_scale=cfg, use_resolution_binning=False,
        output_type="latent",
    ).images


@pytest.mark.parametrize("solver", ["flow_euler", "flow_dpmpp_2m"])
@pytest.mark.parametrize("cfg", [1.0, 4.5])
def test_sampler_equals_sana_pipeline(transformer, solver, cfg):
    conds = _conds(batch=2)
    latent = {"samples": torch.zeros(2, 32, 4, 6)}
    noise = comfy_noise((2, 32, 4, 6), seed=42)
    expected = _reference(transformer, solver, 3.0, 5, cfg, noise, conds)
    with torch.inference_mode():
        ours = sample_sana(transformer, latent, make_conditioning(*conds[:2]), make_conditioning(*conds[2:]),
                           seed=42, steps=5, cfg=cfg, shift=3.0, solver=solver)
    assert torch.allclose(ours * SANA_LATENT_SCALE, expected, atol=1e-5, rtol=0), (ours * SANA_LATENT_SCALE - expected).abs().max()


def test_callback_once_per_step_with_x0(transformer):
    conds = _conds()
    seen = []
    with torch.inference_mode():
        sample_sana(transformer, {"samples": torch.zeros(1, 32, 4, 4)}, make_conditioning(*conds[:2]),
                    make_conditioning(*conds[2:]), seed=0, steps=4, cfg=2.0, shift=3.0, solver="flow_euler",
                    callback=lambda i, n, x0: seen.append((i, n, tuple(x0.shape))))
    assert seen == [(i, 4, (1, 32, 4, 4)) for i in range(1, 5)]


def test_one_prompt_serves_a_batch_and_wrong_width_is_refused(transformer):
    pos, pos_mask, neg, neg_mask = _conds(batch=1)
    with torch.inference_mode():
        out = sample_sana(transformer, {"samples": torch.zeros(3, 32, 4, 4)}, make_conditioning(pos, pos_mask),
                          make_conditioning(neg, neg_mask), seed=0, steps=2, cfg=3.0, shift=3.0, solver="flow_euler")
        assert out.shape == (3, 32, 4, 4)
        with pytest.raises(ValueError, match="expects 48"):
            sample_sana(transformer, {"samples": torch.zeros(1, 32, 4, 4)}, make_conditioning(pos[..., :40], pos_mask),
                        make_conditioning(neg, neg_mask), seed=0, steps=2, cfg=3.0, shift=3.0, solver="flow_euler")


def test_denoise_starts_from_the_noised_input(transformer):
    conds = _conds()
    latent = {"samples": torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(3))}
    with torch.inference_mode():
        full = sample_sana(transformer, latent, make_conditioning(*conds[:2]), make_conditioning(*conds[2:]),
                           seed=5, steps=4, cfg=2.0, shift=3.0, solver="flow_euler", denoise=1.0)
        zero_input = sample_sana(transformer, {"samples": torch.zeros(1, 32, 4, 4)}, make_conditioning(*conds[:2]),
                                 make_conditioning(*conds[2:]), seed=5, steps=4, cfg=2.0, shift=3.0, solver="flow_euler")
        partial = sample_sana(transformer, latent, make_conditioning(*conds[:2]), make_conditioning(*conds[2:]),
                              seed=5, steps=4, cfg=2.0, shift=3.0, solver="flow_euler", denoise=0.5)
    assert torch.equal(full, zero_input), "at denoise 1 the input latent must not matter"
    assert (partial - latent["samples"]).abs().mean() < (full - latent["samples"]).abs().mean()


def test_comfy_noise_matches_comfyui_recipe():
    expected = torch.randn((2, 3, 4, 4), generator=torch.manual_seed(7))
    assert torch.equal(comfy_noise((2, 3, 4, 4), 7), expected)
    picked = comfy_noise((1, 3, 4, 4), 7, batch_index=[1])
    assert torch.equal(picked, comfy_noise((2, 3, 4, 4), 7)[1:2])
