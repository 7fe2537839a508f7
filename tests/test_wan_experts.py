"""Wan2.2 A14B's two experts in one Wan Sampler run equal WanPipeline with transformer_2 (tiny random experts, same
noise); the low-noise expert is loaded once, when the run reaches the boundary, after the high-noise one left."""

import pytest
import torch
from diffusers import WanPipeline
from tiny_wan import tiny_wan_transformer

from sana_wan import comfy_bridge as bridge
from sana_wan.loaders.wan_transformer import T2V_A14B, wan_variant
from sana_wan.nodes.wan import WanSampler
from sana_wan.samplers.conditioning import make_conditioning
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.schedulers import make_scheduler
from sana_wan.samplers.speed import SpeedOptions
from sana_wan.vae.wan import to_raw

STEPS, CFG, CFG_2, SEED, SHIFT, BOUNDARY = 6, 4.0, 3.0, 11, 12.0, 0.875
SHAPE = (1, 16, 2, 4, 4)


def _embeds(valid: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, 16, dtype=torch.int64)
    mask[:, :valid] = 1
    return torch.randn(1, 16, 32, generator=generator) * mask[..., None], mask


@pytest.fixture(scope="module")
def experts():
    return tiny_wan_transformer(seed=21, text_dim=32), tiny_wan_transformer(seed=22, text_dim=32)


def _handle(model):
    return bridge.ModelHandle(model, "diffusion", family="wan", variant=wan_variant(dict(model.config)))


def _ours(experts, solver, **inputs):
    (pos, pos_mask), (neg, neg_mask) = _embeds(9, 1), _embeds(3, 2)
    high, low = (_handle(model) for model in experts)
    with torch.inference_mode():
        (latent,) = WanSampler().sample(high, make_conditioning(pos, pos_mask), make_conditioning(neg, neg_mask),
                                        {"samples": torch.zeros(SHAPE)}, SEED, STEPS, CFG, SHIFT, solver, "default",
                                        1.0, model_2=low, **inputs)
    return latent["samples"]


@pytest.mark.parametrize("solver", ["flow_unipc", "flow_euler"])
def test_two_experts_equal_wan_pipeline_with_transformer_2(experts, solver):
    (pos, _), (neg, _) = _embeds(9, 1), _embeds(3, 2)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=experts[0], transformer_2=experts[1], vae=None,
                       scheduler=make_scheduler(solver, SHIFT), boundary_ratio=BOUNDARY)
    pipe.set_progress_bar_config(disable=True)
    timesteps = []
    expected = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=comfy_noise(SHAPE, SEED), height=32,
                    width=32, num_frames=5, num_inference_steps=STEPS, guidance_scale=CFG, guidance_scale_2=CFG_2,
                    output_type="latent", callback_on_step_end=lambda p, i, t, kw: timesteps.append(t) or {}).frames
    assert any(t >= BOUNDARY * 1000 for t in timesteps) and any(t < BOUNDARY * 1000 for t in timesteps)
    ours = _ours(experts, solver, boundary=BOUNDARY, cfg_2=CFG_2)
    delta = (ours - to_raw(expected)).abs().max().item()
    assert delta <= 1e-5, delta
    high_only = _ours((experts[0], experts[0]), solver, boundary=BOUNDARY, cfg_2=CFG_2)
    assert (high_only - ours).abs().max() > 1e-2, "the low-noise expert must have run"


def test_the_boundary_and_cfg_2_default_to_the_models_and_cfg(experts):
    assert wan_variant(dict(experts[0].config)).experts == T2V_A14B
    assert torch.equal(_ours(experts, "flow_euler"), _ours(experts, "flow_euler", boundary=0.875, cfg_2=CFG))


def test_the_low_noise_expert_loads_once_after_the_high_noise_one_left(experts, monkeypatch):
    events = []
    original = bridge.hand_over

    def recording(old, new, memory_required=0):
        events.append((old.module, new.module))
        return original(old, new, memory_required)

    monkeypatch.setattr(bridge, "hand_over", recording)
    _ours(experts, "flow_euler", boundary=BOUNDARY)
    assert events == [experts], "one hand-over, from the high- to the low-noise expert"
    events.clear()
    _ours(experts, "flow_euler", boundary=0.001)
    assert events == [], "a boundary the run never crosses never loads the low-noise expert"


@pytest.mark.parametrize(("pair", "inputs", "message"), [
    (("t2v", "ti2v"), {}, "differ in in_channels, out_channels"),
    (("t2v", "t2v"), {"boundary": 1.5}, "between 0 and 1"),
])
def test_pairs_that_cannot_run_are_refused(pair, inputs, message):
    models = tuple(tiny_wan_transformer(variant, text_dim=32) for variant in pair)
    with pytest.raises(ValueError, match=message):
        _ours(models, "flow_euler", **inputs)


def test_i2v_a14b_experts_equal_wan_image_to_video_pipeline_with_transformer_2(tmp_path):
    """I2V-A14B: Wan Image to Video conditioning (no CLIP: these experts have no image embedder), two experts with
    boundary 0.9, against WanImageToVideoPipeline(transformer, transformer_2, boundary_ratio=0.9)."""
    from diffusers import WanImageToVideoPipeline
    from test_wan_image_to_video import FRAMES, NEGATIVE, NODES, PROMPTS, _image, _pil
    from tiny_models import tiny_wan_set, write_wan_files

    models = tiny_wan_set()
    paths = write_wan_files(models, str(tmp_path))
    high, low = (tiny_wan_transformer("i2v_a14b", seed=seed, text_dim=64) for seed in (31, 32))
    width, height, steps, shift = 64, 48, 6, 5.0
    start = _image(width, height, 1)
    (encoder,) = NODES["WanTextEncoderLoader"]().load(paths["text_encoder"], "fp32")
    (vae,) = NODES["WanVAELoader"]().load(paths["vae"], "fp32")
    positive, negative = NODES["WanTextEncode"]().encode(encoder, PROMPTS[0], NEGATIVE, False)
    positive, negative, latent = NODES["WanImageToVideoConditioning"]().apply(
        positive, negative, vae, width, height, FRAMES, 1, start, None, None, None)
    with torch.inference_mode():
        (ours,) = WanSampler().sample(_handle(high), positive, negative, latent, SEED, steps, CFG, shift, "flow_unipc",
                                      "default", 1.0, model_2=_handle(low), cfg_2=CFG_2)
    pipe = WanImageToVideoPipeline(tokenizer=models["tokenizer"], text_encoder=models["umt5"], image_encoder=None,
                                   image_processor=None, transformer=high, transformer_2=low, vae=models["vae"],
                                   scheduler=make_scheduler("flow_unipc", shift), boundary_ratio=0.9)
    pipe.set_progress_bar_config(disable=True)
    final = {}
    with torch.no_grad():
        embeds, negative_embeds = WanPipeline(tokenizer=models["tokenizer"], text_encoder=models["umt5"],
                                              transformer=None, vae=None, scheduler=None).encode_prompt(
            PROMPTS[0], NEGATIVE, max_sequence_length=512)
        pipe(image=_pil(start), prompt_embeds=embeds, negative_prompt_embeds=negative_embeds, height=height,
             width=width, num_frames=FRAMES, num_inference_steps=steps, guidance_scale=CFG, guidance_scale_2=CFG_2,
             latents=comfy_noise(tuple(ours["samples"].shape), SEED), output_type="latent",
             callback_on_step_end=lambda p, i, t, kw: final.update(latents=kw["latents"]) or kw)
    delta = (ours["samples"] - to_raw(final["latents"])).abs().max().item()
    assert delta <= 1e-5, delta


def test_magcache_is_refused_and_other_caches_run_per_expert(experts):
    (pos, pos_mask), (neg, neg_mask) = _embeds(9, 1), _embeds(3, 2)
    args = (make_conditioning(pos, pos_mask), make_conditioning(neg, neg_mask), {"samples": torch.zeros(SHAPE)}, SEED,
            STEPS, CFG, SHIFT, "flow_euler", "default", 1.0)
    plain = _ours(experts, "flow_euler", boundary=BOUNDARY)
    for cache, threshold in (("mag", 0.1), ("first_block", 0.0)):
        high, low = (_handle(m).clone(speed=SpeedOptions(cache=cache, threshold=threshold)) for m in experts)
        if cache == "mag":
            with pytest.raises(ValueError, match="MagCache has no calibrated ratios for the Wan2.2 A14B experts"):
                WanSampler().sample(high, *args, model_2=low, boundary=BOUNDARY)
            continue
        with torch.inference_mode():
            (cached,) = WanSampler().sample(high, *args, model_2=low, boundary=BOUNDARY)
        assert (cached["samples"] - plain).abs().max() <= 1e-5, "threshold 0 never skips"


def test_the_low_noise_experts_cache_positions_continue_the_run():
    from sana_wan.samplers.speed import SpeedRun

    seen = []
    run = SpeedRun(None, caching=True)
    schedule = type("Plan", (), {"sigmas": torch.linspace(1, 0, 7), "timesteps": torch.arange(6)})()
    predict = run.track(lambda *a: seen.append(dict(run._position)), schedule, start=3)
    predict(None, None, 0, 6)
    assert seen[0]["step_index"] == 3 and seen[0]["sigma"] == pytest.approx(0.5)


def test_a_lora_on_one_expert_changes_that_expert_only(experts, tmp_path):
    """A Wan2.2 LoRA pair ships one file per expert; here the low-noise expert alone gets one (ComfyUI layout), as
    diffusers' adapter on transformer_2."""
    import copy

    import tiny_lora

    from sana_wan.nodes.lora import WanLoraLoader

    lora = tiny_lora.make_lora(experts[1], seed=5)
    path = tiny_lora.save(tiny_lora.original(lora), str(tmp_path / "wan2.2_low_noise_lora.safetensors"))
    reference_low = copy.deepcopy(experts[1])
    reference_low.load_lora_adapter(tiny_lora.peft(lora), prefix="transformer", adapter_name="low")
    reference_low.set_adapters(["low"], weights=[0.7])
    (pos, pos_mask), (neg, neg_mask) = _embeds(9, 1), _embeds(3, 2)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=experts[0], transformer_2=reference_low,
                       vae=None, scheduler=make_scheduler("flow_euler", SHIFT), boundary_ratio=BOUNDARY)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=comfy_noise(SHAPE, SEED), height=32,
                    width=32, num_frames=5, num_inference_steps=STEPS, guidance_scale=CFG, guidance_scale_2=CFG_2,
                    output_type="latent").frames
    low = WanLoraLoader().load(_handle(copy.deepcopy(experts[1])), path, 0.7)[0]
    with torch.inference_mode():
        (ours,) = WanSampler().sample(_handle(experts[0]), make_conditioning(pos, pos_mask),
                                      make_conditioning(neg, neg_mask), {"samples": torch.zeros(SHAPE)}, SEED, STEPS,
                                      CFG, SHIFT, "flow_euler", "default", 1.0, model_2=low, boundary=BOUNDARY,
                                      cfg_2=CFG_2)
    assert (ours["samples"] - to_raw(expected)).abs().max() <= 1e-5
    assert (ours["samples"] - _ours(experts, "flow_euler", boundary=BOUNDARY, cfg_2=CFG_2)).abs().max() > 1e-3


def test_experts_with_a_weight_budget_or_fp8_storage(experts, tmp_path):
    """Model Memory Options' weight budget (layers cast on call from the offload device) on both experts gives the
    same latents; fp8 weight storage runs both experts to a finite result near the float32 one."""
    from tiny_wan import write_wan_layouts

    from sana_wan.loaders.wan_transformer import load_wan_transformer

    (pos, pos_mask), (neg, neg_mask) = _embeds(9, 1), _embeds(3, 2)
    args = (make_conditioning(pos, pos_mask), make_conditioning(neg, neg_mask), {"samples": torch.zeros(SHAPE)}, SEED,
            STEPS, CFG, SHIFT, "flow_euler", "default", 1.0)
    plain = _ours(experts, "flow_euler", boundary=BOUNDARY)
    budgeted = [bridge.with_memory_options(_handle(m), weight_budget=0) for m in experts]
    fp8 = []
    for index, model in enumerate(experts):
        path = write_wan_layouts(model, str(tmp_path / str(index)))["comfy_prefixed"]
        transformer, variant = load_wan_transformer(path, torch.float32, torch.float8_e4m3fn)
        fp8.append(bridge.ModelHandle(transformer, "diffusion", family="wan", variant=variant))
    with torch.inference_mode():
        (low_vram,) = WanSampler().sample(budgeted[0], *args, model_2=budgeted[1], boundary=BOUNDARY)
        (stored,) = WanSampler().sample(fp8[0], *args, model_2=fp8[1], boundary=BOUNDARY)
    assert (low_vram["samples"] - plain).abs().max() <= 1e-6
    assert torch.isfinite(stored["samples"]).all()
    assert (stored["samples"] - plain).abs().max() <= 0.1 * plain.abs().max(), "fp8 rounding only"
