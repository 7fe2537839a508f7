"""Perturbation guidance equals diffusers: PAG equals SanaPAGPipeline, skip-layer guidance equals diffusers'
SkipLayerGuidance guider driving the modular Wan loop (with its prepare_models / cleanup_models around each forward,
which set and remove the layer-skip hooks). Both on 3-block tiny models, so the perturbed block is one of several."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SanaPAGPipeline
from diffusers.guiders import SkipLayerGuidance as DiffusersSkipLayerGuidance
from diffusers.hooks import LayerSkipConfig
from tiny_sana import tiny_sana_transformer
from tiny_wan import tiny_wan_transformer

import sana_wan
from sana_wan.samplers.conditioning import make_conditioning
from sana_wan.samplers.guidance import CFG
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.perturbed import PAG, SkipLayerGuidance, parse_layers
from sana_wan.samplers.sana import SANA_LATENT_SCALE, sample_sana
from sana_wan.samplers.schedulers import make_scheduler
from sana_wan.samplers.wan import sample_wan
from sana_wan.vae.wan import to_raw

NODES = sana_wan.NODE_CLASS_MAPPINGS
STEPS, SEED = 5, 7


@pytest.fixture(scope="module")
def sana():
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(1, 10, 32, generator=g), torch.randn(1, 10, 32, generator=g)
    pos_mask, neg_mask = torch.ones(1, 10, dtype=torch.int64), torch.ones(1, 10, dtype=torch.int64)
    pos_mask[:, 7:], neg_mask[:, 4:] = 0, 0
    return {"model": tiny_sana_transformer(num_layers=3), "latent": torch.zeros(1, 8, 4, 8),
            "pos": (pos, pos_mask), "neg": (neg, neg_mask)}


@pytest.fixture(scope="module")
def wan():
    g = torch.Generator().manual_seed(2)
    pos, neg = torch.randn(1, 8, 4096, generator=g), torch.randn(1, 8, 4096, generator=g)
    return {"model": tiny_wan_transformer(num_layers=3), "latent": torch.zeros(1, 16, 2, 4, 6), "pos": pos,
            "neg": neg}


def _sana_ours(sana, guidance, model=None):
    with torch.inference_mode():
        out = sample_sana(model or sana["model"], {"samples": sana["latent"]}, make_conditioning(*sana["pos"]),
                          make_conditioning(*sana["neg"]), seed=SEED, steps=STEPS, cfg=1.0, shift=3.0,
                          solver="flow_euler", guidance=guidance)
    return out * SANA_LATENT_SCALE


def _sana_pipeline(sana, layer: int, cfg: float, pag_scale: float, adaptive_scale: float) -> torch.Tensor:
    pipe = SanaPAGPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=sana["model"],
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                           pag_applied_layers=[f"transformer_blocks.{layer}"])
    pipe.set_progress_bar_config(disable=True)
    (pos, pos_mask), (neg, neg_mask) = sana["pos"], sana["neg"]
    _, _, height, width = sana["latent"].shape
    return pipe(prompt_embeds=pos, prompt_attention_mask=pos_mask, negative_prompt=None, negative_prompt_embeds=neg,
                negative_prompt_attention_mask=neg_mask, latents=comfy_noise(tuple(sana["latent"].shape), SEED),
                height=8 * height, width=8 * width, num_inference_steps=STEPS, guidance_scale=cfg,
                pag_scale=pag_scale, pag_adaptive_scale=adaptive_scale, output_type="latent",
                use_resolution_binning=False, return_dict=False)[0]


@pytest.mark.parametrize("cfg, adaptive", [(4.5, 0.0), (4.5, 0.002), (1.0, 0.0)], ids=["cfg", "adaptive", "no_cfg"])
def test_pag_equals_sana_pag_pipeline(sana, cfg, adaptive):
    expected = _sana_pipeline(sana, 1, cfg, 3.0, adaptive)
    delta = (_sana_ours(sana, PAG(3.0, (1,), cfg, adaptive)) - expected).abs().max()
    print(f"PAG cfg {cfg} adaptive {adaptive}: max |delta| {float(delta):.3g}")
    assert delta <= 1e-5
    # The perturbation must matter, and in the block chosen: another block gives another result.
    assert (_sana_ours(sana, PAG(3.0, (2,), cfg, adaptive)) - expected).abs().max() > 1e-2
    assert (_sana_ours(sana, CFG(max(cfg, 1.0))) - expected).abs().max() > 1e-2


def test_pag_restores_the_attention_processors(sana):
    model = sana["model"]
    before = dict(model.attn_processors)
    _sana_ours(sana, PAG(3.0, (0, 2)))
    assert model.attn_processors == before


def test_pag_window_turns_the_perturbation_off(sana):
    """Outside start/end the step is the pipeline's CFG: a window ending before step 0 ... step 4 equals CFG's run
    on those steps, so a window of the last step only is close to CFG and a full window is not."""
    cfg_run = _sana_ours(sana, CFG(4.5))
    late = _sana_ours(sana, PAG(3.0, (1,), 4.5, start=0.8))
    full = _sana_ours(sana, PAG(3.0, (1,), 4.5))
    assert (late - cfg_run).abs().max() < (full - cfg_run).abs().max()
    assert not torch.equal(late, cfg_run)


def _wan_ours(wan, guidance):
    ones = torch.ones(1, wan["pos"].shape[1], dtype=torch.int64)
    with torch.inference_mode():
        return sample_wan(wan["model"], {"samples": wan["latent"]}, make_conditioning(wan["pos"], ones),
                          make_conditioning(wan["neg"], ones), seed=SEED, steps=STEPS, cfg=1.0, shift=5.0,
                          solver="flow_unipc", guidance=guidance)


def _wan_reference(wan, guider) -> torch.Tensor:
    """diffusers' modular Wan denoise loop (modular_pipelines/wan/denoise.py) with the guider."""
    model = wan["model"]
    scheduler = make_scheduler("flow_unipc", 5.0)
    scheduler.set_timesteps(STEPS)
    x = comfy_noise(tuple(wan["latent"].shape), SEED)
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            guider.set_state(step=i, num_inference_steps=STEPS, timestep=t)
            batches = guider.prepare_inputs({"encoder_hidden_states": (wan["pos"], wan["neg"])})
            for batch in batches:
                guider.prepare_models(model)
                batch.noise_pred = model(hidden_states=x, timestep=t.expand(x.shape[0]),
                                         encoder_hidden_states=batch.encoder_hidden_states, return_dict=False)[0]
                guider.cleanup_models(model)
            x = scheduler.step(guider(batches).pred, t, x, return_dict=False)[0]
    return to_raw(x)


def _guider(layers, start, end, scale=3.0, rescale=0.0):
    # skip_layer_config, not skip_layer_guidance_layers: diffusers 0.42 builds LayerSkipConfig(int) from the latter,
    # whose hook then fails on len(int).
    return DiffusersSkipLayerGuidance(guidance_scale=5.0, skip_layer_guidance_scale=scale,
                                      skip_layer_guidance_start=start, skip_layer_guidance_stop=end,
                                      skip_layer_config=LayerSkipConfig(list(layers)), guidance_rescale=rescale)


# 5 steps: 0.0 - 0.8 skips on steps 1 to 3, 0.2 - 0.6 on step 2 only (diffusers' first bound is strict).
@pytest.mark.parametrize("window, rescale", [((0.0, 0.8), 0.0), ((0.2, 1.0), 0.5), ((0.2, 0.6), 0.0)],
                         ids=["to_0.8", "from_0.2_rescaled", "step_2_only"])
def test_skip_layer_guidance_equals_diffusers_guider(wan, window, rescale):
    expected = _wan_reference(wan, _guider((1,), *window, rescale=rescale))
    ours = _wan_ours(wan, SkipLayerGuidance(3.0, (1,), 5.0, *window, rescale=rescale))
    delta = (ours - expected).abs().max()
    print(f"SLG {window} rescale {rescale}: max |delta| {float(delta):.3g}")
    assert delta <= 1e-5
    assert (_wan_ours(wan, SkipLayerGuidance(3.0, (2,), 5.0, *window, rescale=rescale)) - expected).abs().max() \
        > 1e-2, "skipping another block must give another result"
    assert (_wan_reference(wan, _guider((1,), *window, scale=0.0, rescale=rescale)) - expected).abs().max() \
        > 1e-2, "the skip must change the result for the test to mean much"
    assert not hasattr(wan["model"].blocks[1], "_diffusers_hook") or \
        not wan["model"].blocks[1]._diffusers_hook.hooks, "the skip hooks are removed after the forward"


def test_skip_layer_guidance_on_cast_on_call_blocks_equals_the_plain_model(wan):
    """A LoRA'd or partly loaded model's blocks are cast-on-call subclasses (loaders/cast_layers.py), which
    diffusers' layer-skip hook must still recognise as Wan blocks."""
    import copy

    from sana_wan.loaders.cast_layers import install
    guidance = SkipLayerGuidance(3.0, (1,), 5.0, 0.0, 0.8)
    cast = {**wan, "model": install(copy.deepcopy(wan["model"]))}
    assert type(cast["model"].blocks[1]) is not type(wan["model"].blocks[1])
    assert torch.equal(_wan_ours(cast, guidance), _wan_ours(wan, guidance))


def test_skip_layer_forwards_only_in_the_window(wan):
    sizes = []
    handle = wan["model"].register_forward_pre_hook(lambda *_: sizes.append(1))
    try:
        _wan_ours(wan, SkipLayerGuidance(3.0, (1,), 5.0, 0.0, 0.8))  # skip forward on steps 1, 2, 3
    finally:
        handle.remove()
    assert len(sizes) == 2 * STEPS + 3


def test_layers_beyond_the_model_and_wrong_family_are_refused(sana, wan):
    with pytest.raises(ValueError, match="PAG layer 30 is beyond this model's 3 blocks"):
        _sana_ours(sana, PAG(3.0, (0, 30)))
    with pytest.raises(ValueError, match="Skip-layer layer 3 is beyond this model's 3 blocks"):
        _wan_ours(wan, SkipLayerGuidance(3.0, (3,), 5.0))
    with pytest.raises(ValueError, match="PAG guidance is for the Sana sampler"):
        _wan_ours(wan, PAG(3.0, (1,)))
    with pytest.raises(ValueError, match="Skip-layer guidance is for the Wan sampler"):
        _sana_ours(sana, SkipLayerGuidance(3.0, (1,)))


def test_bad_options_are_refused():
    assert parse_layers("8") == (8,) and parse_layers(" 8, 12 ") == (8, 12) and parse_layers("9,9") == (9,)
    for bad in ("", "8;12", "eight", "-1", "8,", "1.5"):
        with pytest.raises(ValueError, match="block indices separated by commas"):
            parse_layers(bad)
    for bad in ((), (-1,), (True,), ("8",)):
        with pytest.raises(ValueError, match="layers must be one or more block indices"):
            PAG(3.0, bad)
    with pytest.raises(ValueError, match="start < end"):
        SkipLayerGuidance(3.0, (9,), start=0.5, end=0.5)
    for option in ("cfg", "adaptive_scale"):
        with pytest.raises(ValueError, match=f"{option} must be a finite"):
            PAG(3.0, **{option: math.nan})


def test_nodes(wan):
    defaults = {name: {k: v[1]["default"] for k, v in NODES[name].INPUT_TYPES()["required"].items()}
                for name in ("GuidancePAG", "GuidanceSkipLayer")}
    assert defaults["GuidancePAG"] == {"scale": 3.0, "layers": "8", "cfg": 4.5, "adaptive_scale": 0.0,
                                       "start_percent": 0.0, "end_percent": 1.0}
    slg = DiffusersSkipLayerGuidance(skip_layer_guidance_layers=[9])
    assert defaults["GuidanceSkipLayer"] == {"scale": 3.0, "layers": "9", "cfg": 5.0,
                                             "start_percent": slg.skip_layer_guidance_start,
                                             "end_percent": slg.skip_layer_guidance_stop}
    (pag,) = NODES["GuidancePAG"]().build(**{**defaults["GuidancePAG"], "layers": "7, 8"})
    assert isinstance(pag, PAG) and pag.layers == (7, 8) and pag.cfg == 4.5
    (skip,) = NODES["GuidanceSkipLayer"]().build(**defaults["GuidanceSkipLayer"])
    assert isinstance(skip, SkipLayerGuidance) and skip.layers == (9,) and (skip.start, skip.end) == (0.01, 0.2)
    with pytest.raises(ValueError, match="block indices"):
        NODES["GuidanceSkipLayer"]().build(**{**defaults["GuidanceSkipLayer"], "layers": "nine"})
