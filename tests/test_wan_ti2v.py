"""Wan2.2 TI2V-5B: text-to-video equals WanPipeline(expand_timesteps=True), image-to-video through the Wan2.2 TI2V
Latent node equals WanImageToVideoPipeline(expand_timesteps=True) on tiny random models and the same noise; the
node's LATENT is native Wan22ImageToVideoLatent's (samples and noise_mask)."""

import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from PIL import Image
from tiny_wan import tiny_wan_transformer
from tiny_wan_vae import TINY_WAN22_VAE_CONFIG, tiny_wan_vae

from sana_wan import comfy_bridge as bridge
from sana_wan.loaders.wan_transformer import wan_variant
from sana_wan.nodes.wan import WanSampler
from sana_wan.nodes.wan22 import WanTI2VLatent
from sana_wan.samplers.conditioning import make_conditioning
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.schedulers import make_scheduler
from sana_wan.vae.wan import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, to_raw

STEPS, CFG, SEED, SHIFT = 4, 5.0, 5, 5.0
WIDTH, HEIGHT, FRAMES = 64, 32, 5


@pytest.fixture(scope="module")
def models():
    statistics = {"latents_mean": list(WAN22_LATENTS_MEAN), "latents_std": list(WAN22_LATENTS_STD)}
    vae = tiny_wan_vae(seed=3, config={**TINY_WAN22_VAE_CONFIG, **statistics})
    return tiny_wan_transformer("ti2v", seed=12, text_dim=32), vae


def _embeds(valid: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, 16, dtype=torch.int64)
    mask[:, :valid] = 1
    return torch.randn(1, 16, 32, generator=generator) * mask[..., None], mask


def _image(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    smooth = torch.rand(1, 3, HEIGHT // 8, WIDTH // 8, generator=generator)
    image = torch.nn.functional.interpolate(smooth, size=(HEIGHT, WIDTH), mode="bilinear").movedim(1, -1)
    return (image * 255).round() / 255


def _ours(transformer, latent, solver):
    (pos, pos_mask), (neg, neg_mask) = _embeds(9, 1), _embeds(3, 2)
    handle = bridge.ModelHandle(transformer, "diffusion", family="wan", variant=wan_variant(dict(transformer.config)))
    with torch.inference_mode():
        (samples,) = WanSampler().sample(handle, make_conditioning(pos, pos_mask), make_conditioning(neg, neg_mask),
                                         latent, SEED, STEPS, CFG, SHIFT, solver, "default", 1.0)
    return samples["samples"]


def _final_latents():
    final = {}
    return final, lambda pipe, i, t, kwargs: final.update(latents=kwargs["latents"]) or kwargs


@pytest.mark.parametrize("solver", ["flow_unipc", "flow_euler"])
def test_text_to_video_equals_wan_pipeline_with_expanded_timesteps(models, solver):
    transformer, vae = models
    (latent,) = WanTI2VLatent().generate(bridge.ModelHandle(vae, "vae"), WIDTH, HEIGHT, FRAMES, 1)
    assert set(latent) == {"samples"} and latent["samples"].shape == (1, 48, 2, HEIGHT // 16, WIDTH // 16)
    (pos, _), (neg, _) = _embeds(9, 1), _embeds(3, 2)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                       scheduler=make_scheduler(solver, SHIFT), expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=comfy_noise(latent["samples"].shape, SEED),
                    height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=CFG,
                    output_type="latent").frames
    delta = (_ours(transformer, latent, solver) - to_raw(expected)).abs().max().item()
    assert delta <= 1e-5, delta


@pytest.mark.parametrize("solver", ["flow_unipc", "flow_euler"])
def test_image_to_video_equals_wan_image_to_video_pipeline(models, solver):
    transformer, vae = models
    image = _image(4)
    (latent,) = WanTI2VLatent().generate(bridge.ModelHandle(vae, "vae"), WIDTH, HEIGHT, FRAMES, 1, image)
    assert latent["noise_mask"].shape == (1, 1, 2, HEIGHT // 16, WIDTH // 16)
    assert latent["noise_mask"][:, :, 0].max() == 0 and latent["noise_mask"][:, :, 1:].min() == 1
    (pos, _), (neg, _) = _embeds(9, 1), _embeds(3, 2)
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, image_encoder=None, image_processor=None,
                                   transformer=transformer, vae=vae, scheduler=make_scheduler(solver, SHIFT),
                                   expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    final, keep = _final_latents()
    pil = Image.fromarray((image[0].numpy() * 255).round().astype("uint8"))
    pipe(image=pil, prompt_embeds=pos, negative_prompt_embeds=neg, latents=comfy_noise(latent["samples"].shape, SEED),
         height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=CFG,
         output_type="latent", callback_on_step_end=keep)
    # The pipeline puts the image's latent back into the first frame after its last step, before decoding.
    condition = (vae.encode(torch.tensor(image).permute(0, 3, 1, 2).unsqueeze(2) * 2 - 1).latent_dist.mode())
    mask = latent["noise_mask"]
    expected = (1 - mask) * condition + mask * to_raw(final["latents"])
    ours = _ours(transformer, latent, solver)
    delta = (ours - expected).abs().max().item()
    assert delta <= 1e-5, delta
    kept = (ours[:, :, 0] - latent["samples"][:, :, 0]).abs().max()
    assert kept <= 1e-6, "the given frame is kept as encoded (up to the normalisation's round trip)"


def test_the_latent_node_refuses_the_wan21_vae_and_bad_sizes(models):
    with pytest.raises(ValueError, match="Wan2.2 VAE"):
        WanTI2VLatent().generate(bridge.ModelHandle(tiny_wan_vae(), "vae"), WIDTH, HEIGHT, FRAMES, 1)
    with pytest.raises(ValueError, match="multiple of 32"):
        WanTI2VLatent().generate(bridge.ModelHandle(models[1], "vae"), 48, HEIGHT, FRAMES, 1)
