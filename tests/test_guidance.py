"""Every guidance method equals diffusers' guider class driving the same scheduler loop, for Sana and for Wan.

The reference is diffusers' modular denoise loop (modular_pipelines/wan/denoise.py): `set_state` each step,
`prepare_inputs` to learn which predictions the guider wants, the transformer's predictions for them, the guider's
`pred` into `scheduler.step`. So the guidance arithmetic, the step windows and APG's momentum are diffusers'.
"""

import inspect
import math

import pytest
import torch
from diffusers.guiders import AdaptiveProjectedGuidance, ClassifierFreeGuidance, ClassifierFreeZeroStarGuidance
from safetensors.torch import save_file
from tiny_sana import tiny_sana_transformer
from tiny_wan import tiny_wan_transformer

import sana_wan
from sana_wan.samplers.conditioning import make_conditioning
from sana_wan.samplers.guidance import APG, CFG, CFGZeroStar
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.sana import SANA_LATENT_SCALE, sample_sana
from sana_wan.samplers.schedulers import make_scheduler
from sana_wan.samplers.wan import sample_wan
from sana_wan.vae.wan import to_raw

NODES = sana_wan.NODE_CLASS_MAPPINGS
STEPS, SEED = 5, 7
# (ours, diffusers') per method, for a guided window [start, end); every option set away from its no-op value. The
# APG threshold clips some of the tiny models' guidance directions (norms 1 to 4 for Sana, 8 to 10 for Wan), not all.
METHODS = {
    "cfg": (lambda s, e: CFG(4.5, rescale=0.7, start=s, end=e),
            lambda s, e: ClassifierFreeGuidance(guidance_scale=4.5, guidance_rescale=0.7, start=s, stop=e)),
    "cfg_zero_star": (lambda s, e: CFGZeroStar(4.5, zero_init_steps=1, start=s, end=e),
                      lambda s, e: ClassifierFreeZeroStarGuidance(guidance_scale=4.5, zero_init_steps=1, start=s,
                                                                  stop=e)),
    "apg": (lambda s, e: APG(7.5, eta=0.5, norm_threshold=2.0, momentum=-0.5, start=s, end=e),
            lambda s, e: AdaptiveProjectedGuidance(guidance_scale=7.5, eta=0.5, adaptive_projected_guidance_rescale=2.0,
                                                   adaptive_projected_guidance_momentum=-0.5, start=s, stop=e)),
}


@pytest.fixture(scope="module")
def sana():
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(2, 12, 32, generator=g), torch.randn(2, 9, 32, generator=g)
    pos_mask, neg_mask = torch.ones(2, 12, dtype=torch.int64), torch.ones(2, 9, dtype=torch.int64)
    pos_mask[:, 7:], neg_mask[:, 3:] = 0, 0
    conds = {"encoder_hidden_states": (pos, neg), "encoder_attention_mask": (pos_mask, neg_mask)}
    return {"model": tiny_sana_transformer(), "latent": torch.zeros(2, 8, 4, 6), "solver": "flow_dpmpp_2m",
            "shift": 3.0, "conds": conds}


@pytest.fixture(scope="module")
def wan():
    g = torch.Generator().manual_seed(2)
    pos, neg = torch.randn(1, 8, 4096, generator=g), torch.randn(1, 8, 4096, generator=g)
    return {"model": tiny_wan_transformer(), "latent": torch.zeros(1, 16, 2, 4, 6), "solver": "flow_unipc",
            "shift": 5.0, "conds": {"encoder_hidden_states": (pos, neg)}}


def _conditionings(family: dict):
    """CONDITIONING of the positive and the negative prompt (the masks stay all ones where there is none)."""
    conds = family["conds"]
    masks = conds.get("encoder_attention_mask", [torch.ones(e.shape[:2], dtype=torch.int64)
                                                 for e in conds["encoder_hidden_states"]])
    return [make_conditioning(embeds, mask) for embeds, mask in zip(conds["encoder_hidden_states"], masks)]


def _ours(name: str, family: dict, guidance=None, cfg: float = 1.0, negative=None) -> torch.Tensor:
    """Our sampler's final latents, in the space `_final` puts the reference's in."""
    positive, default_negative = _conditionings(family)
    negative = default_negative if negative is None else negative
    sample = sample_sana if name == "sana" else sample_wan
    with torch.inference_mode():
        out = sample(family["model"], {"samples": family["latent"]}, positive, negative, seed=SEED, steps=STEPS,
                     cfg=cfg, shift=family["shift"], solver=family["solver"], guidance=guidance)
    return out * SANA_LATENT_SCALE if name == "sana" else out


def _padded(tensor: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(tensor, (0, 0) * (tensor.ndim - 2) + (0, length - tensor.shape[1]))


def _sana_predictions(transformer, x, t, batches) -> list[torch.Tensor]:
    """The guider's batches in one forward, uncond first, as SanaPipeline batches them (prompts padded to one length,
    as its tokenizer pads every prompt to 300 tokens). Separate forwards would differ by float32 rounding only."""
    length = max(b.encoder_hidden_states.shape[1] for b in batches)
    embeds = torch.cat([_padded(b.encoder_hidden_states, length) for b in reversed(batches)])
    masks = torch.cat([_padded(b.encoder_attention_mask, length) for b in reversed(batches)])
    timestep = t.expand(x.shape[0] * len(batches)) * transformer.config.timestep_scale
    out = transformer(torch.cat([x] * len(batches)), encoder_hidden_states=embeds, encoder_attention_mask=masks,
                      timestep=timestep, return_dict=False)[0].float()
    return list(reversed(out.chunk(len(batches))))


def _wan_predictions(transformer, x, t, batches) -> list[torch.Tensor]:
    """One forward per guider batch, as WanPipeline and diffusers' modular Wan loop run them."""
    return [transformer(hidden_states=x, timestep=t.expand(x.shape[0]), encoder_hidden_states=b.encoder_hidden_states,
                        return_dict=False)[0] for b in batches]


def _reference(name: str, family: dict, guider) -> torch.Tensor:
    """diffusers' guider driving the scheduler from the same noise; final latents in the transformer's space."""
    predictions = _sana_predictions if name == "sana" else _wan_predictions
    scheduler = make_scheduler(family["solver"], family["shift"])
    scheduler.set_timesteps(STEPS)
    x = comfy_noise(tuple(family["latent"].shape), SEED)
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            guider.set_state(step=i, num_inference_steps=STEPS, timestep=t)
            batches = guider.prepare_inputs(family["conds"])
            for batch, prediction in zip(batches, predictions(family["model"], x, t, batches)):
                batch.noise_pred = prediction
            x = scheduler.step(guider(batches).pred, t, x, return_dict=False)[0]
    return x


def _final(name: str, latents: torch.Tensor) -> torch.Tensor:
    """What the sampler returns: Wan gives raw VAE latents."""
    return latents if name == "sana" else to_raw(latents)


@pytest.mark.parametrize("window", [(0.0, 1.0), (0.5, 1.0), (0.0, 0.6)], ids=["whole", "from_half", "to_0.6"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", ["sana", "wan"])
def test_guidance_equals_diffusers_guider(request, name, method, window):
    family = request.getfixturevalue(name)
    ours_guidance, diffusers_guider = METHODS[method]
    ours = _ours(name, family, ours_guidance(*window))
    expected = _final(name, _reference(name, family, diffusers_guider(*window)))
    delta = (ours - expected).abs().max()
    print(f"{name} {method} {window}: max |delta| {float(delta):.3g}")
    assert delta <= 1e-5
    unguided = _final(name, _reference(name, family, ClassifierFreeGuidance(guidance_scale=1.0)))
    assert (expected - unguided).abs().max() > 1e-2, "the guidance must change the result for the test to mean much"


@pytest.mark.parametrize("name", ["sana", "wan"])
def test_no_guidance_input_is_the_samplers_cfg(request, name):
    """Without a guidance input the sampler is the pipelines' CFG of `cfg`, which guides only above 1."""
    family = request.getfixturevalue(name)
    assert torch.equal(_ours(name, family, cfg=4.5), _ours(name, family, CFG(4.5), cfg=1.0))
    assert torch.equal(_ours(name, family, cfg=0.5), _ours(name, family, CFG(1.0), cfg=0.5))


def _forward_batches(transformer, run) -> list[int]:
    """The batch size of every transformer forward during `run()`."""
    sizes = []
    handle = transformer.register_forward_pre_hook(
        lambda _m, args, kwargs: sizes.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
        with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return sizes


def test_unguided_steps_skip_the_uncond_forward(sana, wan):
    # 5 steps, start 0.5: guided from step int(2.5) = 2 on, as diffusers counts.
    assert _forward_batches(sana["model"], lambda: _ours("sana", sana, CFG(4.5, start=0.5))) == [2, 2, 4, 4, 4]
    calls = _forward_batches(wan["model"], lambda: _ours("wan", wan, CFGZeroStar(4.5, zero_init_steps=2)))
    assert calls == [1, 1, 1, 1, 1, 1, 1, 1], "zero-init steps need no uncond"
    # A scale of 1 never reads the negative prompt, so none needs to be connected.
    assert _forward_batches(wan["model"], lambda: _ours("wan", wan, APG(1.0), negative=[])) == [1] * STEPS


def test_a_guidance_serves_many_runs_unchanged(sana):
    """APG's momentum average belongs to a run: the node's object gives the same result every time."""
    apg = APG(7.5, momentum=-0.5)
    first = _ours("sana", sana, apg)
    assert torch.equal(first, _ours("sana", sana, apg))
    assert not hasattr(apg, "momentum_buffer")


def test_defaults_are_diffusers():
    ours = inspect.signature(APG).parameters
    theirs = inspect.signature(AdaptiveProjectedGuidance).parameters
    assert ours["eta"].default == theirs["eta"].default
    assert ours["norm_threshold"].default == theirs["adaptive_projected_guidance_rescale"].default
    assert theirs["adaptive_projected_guidance_momentum"].default is None and ours["momentum"].default == 0.0
    assert inspect.signature(CFGZeroStar).parameters["zero_init_steps"].default == \
        inspect.signature(ClassifierFreeZeroStarGuidance).parameters["zero_init_steps"].default
    node_defaults = {k: v[1]["default"] for k, v in NODES["GuidanceAPG"].INPUT_TYPES()["required"].items()}
    assert {k: node_defaults[k] for k in ("eta", "norm_threshold", "momentum")} == \
        {k: ours[k].default for k in ("eta", "norm_threshold", "momentum")}


@pytest.mark.parametrize("node, args", [
    ("GuidanceCFG", {"scale": 5.0, "rescale": 0.0}),
    ("GuidanceCFGZeroStar", {"scale": 5.0, "zero_init_steps": 1}),
    ("GuidanceAPG", {"scale": 7.5, "eta": 1.0, "norm_threshold": 15.0, "momentum": 0.0}),
])
def test_guidance_nodes_refuse_bad_input(node, args):
    spec = NODES[node].INPUT_TYPES()["required"]
    assert NODES[node].CATEGORY == "sampling/guidance" and NODES[node].RETURN_TYPES == ("GUIDANCE",)
    for name, (_, options) in spec.items():
        assert {"default", "min", "max", "step", "tooltip"} <= set(options), name
    build = NODES[node]().build
    window = {"start_percent": 0.0, "end_percent": 1.0}
    assert isinstance(build(**args, **window)[0], (CFG, CFGZeroStar, APG))
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="scale must be a finite number"):
            build(**{**args, "scale": bad}, **window)
    for start, end in ((0.5, 0.5), (0.8, 0.2), (0.0, 1.5)):
        with pytest.raises(ValueError, match="start < end"):
            build(**args, start_percent=start, end_percent=end)
    with pytest.raises(ValueError, match="start"):
        build(**args, start_percent=math.nan, end_percent=1.0)


def test_bad_method_options_are_refused():
    with pytest.raises(ValueError, match="rescale must be a finite"):
        CFG(4.5, rescale=math.nan)
    with pytest.raises(ValueError, match="zero_init_steps"):
        CFGZeroStar(4.5, zero_init_steps=-1)
    for option in ("eta", "norm_threshold", "momentum"):
        with pytest.raises(ValueError, match=f"{option} must be a finite"):
            APG(7.5, **{option: math.inf})


def test_samplers_take_a_guidance_input(tmp_path, sana, wan):
    """The sampler nodes pass a connected guidance on (loaded from a file, the same weights as the library run)."""
    for name, family, node, loader in (("sana", sana, "SanaSampler", "SanaTransformerLoader"),
                                       ("wan", wan, "WanSampler", "WanTransformerLoader")):
        assert NODES[node].INPUT_TYPES()["optional"]["guidance"][0] == "GUIDANCE"
        path = str(tmp_path / f"{name}.safetensors")
        save_file({k: v.contiguous() for k, v in family["model"].state_dict().items()}, path)
        (model,) = NODES[loader]().load(path, "fp32")
        positive, negative = _conditionings(family)
        guidance = APG(7.5, momentum=-0.5, start=0.2)
        schedule = ("default",) if name == "wan" else ()
        (samples,) = NODES[node]().sample(model, positive, negative, {"samples": family["latent"]}, SEED, STEPS, 1.0,
                                          family["shift"], family["solver"], *schedule, 1.0, guidance=guidance)
        expected = _ours(name, family, guidance)
        samples = samples["samples"]
        assert torch.allclose(samples * SANA_LATENT_SCALE if name == "sana" else samples, expected, atol=1e-6)
