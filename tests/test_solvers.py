"""Solvers and noise schedules: Heun and custom sigmas equal diffusers, previews show the sigmas a run visits."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline

from sana_wan.comfy_bridge import ModelHandle
from sana_wan.loaders.sana_transformer import sana_variant
from sana_wan.nodes.sana import SanaSampler
from sana_wan.nodes.schedule import CustomSigmas, FlowSigmas
from sana_wan.samplers import loop
from sana_wan.samplers.conditioning import make_conditioning
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.sana import SANA_LATENT_SCALE, sample_sana, sana_velocity
from sana_wan.samplers.schedulers import (
    SIGMA_SOLVERS, SOLVERS, custom_sigmas_scheduler, make_scheduler, parse_sigmas, schedule_sigmas, step_sigmas,
)
from sana_wan.samplers.sigma_plot import CURVE, plot_sigmas
from tiny_sana import tiny_sana_transformer

SHIFT = 3.0


@pytest.fixture(scope="module")
def transformer():
    return tiny_sana_transformer(in_channels=32, out_channels=32, caption_channels=48)


def _conds(batch=1):
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(batch, 12, 48, generator=g)
    pos_mask = torch.ones(batch, 12, dtype=torch.int64)
    pos_mask[:, 7:] = 0
    neg = torch.randn(batch, 12, 48, generator=g)
    neg_mask = torch.ones(batch, 12, dtype=torch.int64)
    neg_mask[:, 3:] = 0
    return pos, pos_mask, neg, neg_mask


def _pipeline(transformer, scheduler, noise, conds, cfg, **schedule):
    """SanaPipeline's latents (model space) from `noise`; `schedule` is num_inference_steps= or sigmas=."""
    pos, pos_mask, neg, neg_mask = conds
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt_embeds=pos, prompt_attention_mask=pos_mask, negative_prompt_embeds=neg, negative_prompt=None,
        negative_prompt_attention_mask=neg_mask, latents=noise.clone(), height=noise.shape[2] * 32,
        width=noise.shape[3] * 32, guidance_scale=cfg, use_resolution_binning=False, output_type="latent", **schedule,
    ).images


def _ours_custom(transformer, solver, sigmas, noise, conds, cfg):
    """Our loop over custom sigmas from pure noise, in model space (as the samplers will run it)."""
    scheduler, plan = loop.prepare_custom_schedule(solver, sigmas, noise.device)
    predict = sana_velocity(transformer, make_conditioning(*conds[:2]), make_conditioning(*conds[2:]), cfg,
                            noise.shape[0])
    x = loop.start_latent(plan, noise, torch.zeros_like(noise))
    return loop.sample_flow(predict, scheduler, plan, x)


def _record_timesteps(transformer):
    """Hook that collects the timestep of every transformer call; returns (list, handle)."""
    seen = []

    def hook(_module, _args, kwargs):
        seen.append(float(kwargs["timestep"][0]))

    return seen, transformer.register_forward_pre_hook(hook, with_kwargs=True)


def _calls(sigmas: torch.Tensor, order: int) -> torch.Tensor:
    """Per model call noise levels of a schedule with one sigma per step: Heun lands twice on every inner level."""
    return torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(order), sigmas[-1:]])


# ------------------------------------------------------------------------------------------------------ Heun


@pytest.mark.parametrize("cfg", [1.0, 4.5])
def test_heun_equals_sana_pipeline(transformer, cfg):
    conds = _conds(batch=2)
    noise = comfy_noise((2, 32, 4, 6), seed=42)
    expected = _pipeline(transformer, make_scheduler("flow_heun", SHIFT), noise, conds, cfg, num_inference_steps=4)
    with torch.inference_mode():
        ours = sample_sana(transformer, {"samples": torch.zeros(2, 32, 4, 6)}, make_conditioning(*conds[:2]),
                           make_conditioning(*conds[2:]), seed=42, steps=4, cfg=cfg, shift=SHIFT, solver="flow_heun")
    assert torch.allclose(ours * SANA_LATENT_SCALE, expected, atol=1e-5, rtol=0), \
        (ours * SANA_LATENT_SCALE - expected).abs().max()


def test_heun_reports_progress_per_step_not_per_model_call(transformer):
    conds = _conds()
    seen = []
    with torch.inference_mode():
        sample_sana(transformer, {"samples": torch.zeros(1, 32, 4, 4)}, make_conditioning(*conds[:2]),
                    make_conditioning(*conds[2:]), seed=0, steps=3, cfg=2.0, shift=SHIFT, solver="flow_heun",
                    callback=lambda i, n, x0: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_heun_calls_count_as_steps_of_the_run_for_guidance():
    """Both calls of a Heun step belong to one step of the run, so guidance windows count steps, not calls."""
    scheduler = make_scheduler("flow_heun", SHIFT)
    plan = loop.prepare_schedule(scheduler, 3, 1.0, "cpu")
    seen = []

    def predict(x, t, step, total):
        seen.append((step, total))
        return torch.zeros_like(x)

    loop.sample_flow(predict, scheduler, plan, torch.ones(1, 4, 2, 2))
    assert seen == [(0, 3), (0, 3), (1, 3), (1, 3), (2, 3)]


def test_heun_denoise_runs_the_last_steps_two_calls_each(transformer):
    """denoise 0.5 over 3 steps: the last 3 of 6 Heun steps, i.e. 5 model calls starting at user step 3."""
    conds = _conds()
    seen, handle = _record_timesteps(transformer)
    try:
        with torch.inference_mode():
            sample_sana(transformer, {"samples": torch.randn(1, 32, 4, 4)}, make_conditioning(*conds[:2]),
                        make_conditioning(*conds[2:]), seed=0, steps=3, cfg=1.0, shift=SHIFT, solver="flow_heun",
                        denoise=0.5)
    finally:
        handle.remove()
    full = schedule_sigmas("flow_heun", SHIFT, 6)
    assert torch.equal(schedule_sigmas("flow_heun", SHIFT, 3, denoise=0.5), full[3:])
    assert seen == (_calls(full[3:], 2)[:-1] * 1000).tolist()


# -------------------------------------------------------------------------------------------- schedule_sigmas


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("steps", [1, 4, 9])
def test_schedule_sigmas_are_the_schedulers_own(solver, steps):
    scheduler = make_scheduler(solver, SHIFT)
    scheduler.set_timesteps(steps, device="cpu")  # what the reference pipelines call
    expected = torch.unique_consecutive(scheduler.sigmas)  # Heun repeats inner levels for its second call
    sigmas = schedule_sigmas(solver, SHIFT, steps)
    assert torch.equal(sigmas, expected)
    assert sigmas.shape == (steps + 1,) and sigmas.dtype == torch.float32 and sigmas[-1] == 0


def _comfy_simple(shift: float, steps: int) -> torch.Tensor:
    """ComfyUI's `simple` scheduler over ModelSamplingDiscreteFlow's table, written from their definitions."""
    t = torch.arange(1, 1001, dtype=torch.float32) / 1000
    table = shift * t / (1 + (shift - 1) * t)
    return torch.tensor([float(table[-(1 + int(i * 1000 / steps))]) for i in range(steps)] + [0.0])


@pytest.mark.parametrize("solver", SIGMA_SOLVERS)
@pytest.mark.parametrize("steps", [1, 7, 20])
def test_simple_spacing_is_comfyui_simple(solver, steps):
    # UniPC lowers a first sigma of 1 by 1e-6, as for its own schedule.
    assert torch.allclose(schedule_sigmas(solver, SHIFT, steps, "simple"), _comfy_simple(SHIFT, steps), atol=2e-6,
                          rtol=0)


def test_simple_spacing_refused_for_dpm_solver():
    with pytest.raises(ValueError, match="'simple' schedule"):
        schedule_sigmas("flow_dpmpp_2m", SHIFT, 10, "simple")


# DPM-Solver takes no explicit sigmas, so no `simple` spacing (its refusal is tested above).
RUNS = [(solver, "default") for solver in sorted(SOLVERS)] + [(solver, "simple") for solver in SIGMA_SOLVERS]


@pytest.mark.parametrize("solver, spacing", RUNS)
@pytest.mark.parametrize("denoise", [1.0, 0.4])
def test_a_run_visits_the_previewed_sigmas(solver, spacing, denoise):
    scheduler = make_scheduler(solver, SHIFT)
    plan = loop.prepare_schedule(scheduler, 5, denoise, "cpu", spacing)
    sigmas = schedule_sigmas(solver, SHIFT, 5, spacing, denoise)
    assert len(sigmas) == 6
    assert torch.equal(plan.sigmas.cpu(), _calls(sigmas, scheduler.order))


# ------------------------------------------------------------------------------------------------ custom sigmas


@pytest.mark.parametrize("solver", SIGMA_SOLVERS)
def test_custom_sigmas_are_taken_as_given(solver):
    sigmas = parse_sigmas("0.95, 0.8, 0.55, 0.3, 0.1")
    assert torch.equal(step_sigmas(custom_sigmas_scheduler(solver, sigmas, "cpu")), sigmas)


def test_custom_sigmas_refused_for_dpm_solver():
    with pytest.raises(ValueError, match="flow_euler, flow_heun, flow_unipc"):
        custom_sigmas_scheduler("flow_dpmpp_2m", parse_sigmas("1, 0.5, 0"), "cpu")


def test_custom_sigmas_drive_flow_euler_like_diffusers(transformer):
    """diffusers re-applies its shift to given sigmas: its scheduler has shift 1 here, ours takes them as given."""
    conds = _conds()
    noise = comfy_noise((1, 32, 4, 4), seed=3)
    given = [1.0, 0.8, 0.55, 0.3, 0.1]
    expected = _pipeline(transformer, FlowMatchEulerDiscreteScheduler(shift=1.0), noise, conds, 3.0, sigmas=given)
    with torch.inference_mode():
        ours = _ours_custom(transformer, "flow_euler", parse_sigmas("1.0, 0.8, 0.55, 0.3, 0.1, 0"), noise, conds, 3.0)
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0), (ours - expected).abs().max()


def test_heun_default_schedule_as_custom_sigmas_equals_heun_pipeline(transformer):
    conds = _conds()
    noise = comfy_noise((1, 32, 4, 4), seed=4)
    expected = _pipeline(transformer, make_scheduler("flow_heun", SHIFT), noise, conds, 3.0, num_inference_steps=3)
    with torch.inference_mode():
        ours = _ours_custom(transformer, "flow_heun", schedule_sigmas("flow_heun", SHIFT, 3), noise, conds, 3.0)
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0), (ours - expected).abs().max()


def test_parse_sigmas_accepts_commas_spaces_and_appends_the_final_zero():
    assert parse_sigmas("1.0, 0.75, 0.5, 0.25, 0").tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert parse_sigmas("1 0.5\n0.25").tolist() == [1.0, 0.5, 0.25, 0.0]


@pytest.mark.parametrize("text, message", [
    ("1.0, abc, 0", "'abc' is not a number"),
    ("1.0, nan, 0", "finite"),
    ("1.0, inf", "finite"),
    ("1.5, 0.5, 0", r"within \[0, 1\]"),
    ("1.0, -0.1", r"within \[0, 1\]"),
    ("0.5, 0.9, 0", "0.5 is followed by 0.9"),
    ("1.0, 0.5, 0.5, 0", "strictly down"),
    ("1.0", "at least two"),
    ("", "at least two"),
])
def test_parse_sigmas_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_sigmas(text)


# ------------------------------------------------------------------------------------------------------- plot


def test_plot_is_an_image_with_a_falling_curve():
    image = plot_sigmas(schedule_sigmas("flow_euler", SHIFT, 12), "flow_euler, 12 steps")
    assert image.shape == (1, 320, 512, 3) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    pixels = (image[0].numpy() * 255).round()
    assert (pixels < 250).any(axis=-1).mean() > 0.02, "the chart is blank"
    curve = (np.abs(pixels - np.array(CURVE)).max(axis=-1) < 40)
    columns = np.nonzero(curve.any(axis=0))[0]
    assert columns[-1] - columns[0] > 300, "the curve should span the plot's width"
    rows = np.array([np.nonzero(curve[:, c])[0].mean() for c in columns])
    assert (np.diff(rows) > -4).all(), "the curve must not rise from left to right"
    assert rows[-1] - rows[0] > 150, "the curve falls from sigma 1 to 0"


# ------------------------------------------------------------------------------------------------------ nodes


def test_flow_sigmas_node_outputs_the_schedule_and_its_plot():
    sigmas, plot = FlowSigmas().schedule("flow_unipc", 5.0, 8, "simple", 0.5)
    assert torch.equal(sigmas, schedule_sigmas("flow_unipc", 5.0, 8, "simple", 0.5))
    assert sigmas.ndim == 1 and sigmas[-1] == 0 and plot.shape == (1, 320, 512, 3)
    with pytest.raises(ValueError, match="steps"):
        FlowSigmas().schedule("flow_euler", 3.0, 0, "default", 1.0)


def test_custom_sigmas_node_validates_at_queue_time():
    sigmas, plot = CustomSigmas().schedule("1.0, 0.6, 0.2")
    assert sigmas.tolist() == pytest.approx([1.0, 0.6, 0.2, 0.0]) and plot.shape == (1, 320, 512, 3)
    assert CustomSigmas.VALIDATE_INPUTS("1.0, 0.6, 0.2") is True
    assert "not a number" in CustomSigmas.VALIDATE_INPUTS("1.0, x")


@pytest.mark.parametrize("node", [FlowSigmas, CustomSigmas])
def test_every_node_input_is_documented(node):
    for name, (kind, options) in node.INPUT_TYPES()["required"].items():
        assert "default" in options and "tooltip" in options, name
        if kind in ("INT", "FLOAT"):
            assert {"min", "max", "step"} <= options.keys(), name
    assert node.RETURN_TYPES == ("SIGMAS", "IMAGE") and node.CATEGORY == "sampling/schedules"


def test_sampler_nodes_take_custom_sigmas_as_given():
    """SIGMAS from the Custom Sigmas node drive the Sana sampler exactly as the same schedule run by hand."""
    transformer = tiny_sana_transformer(in_channels=32, out_channels=32, caption_channels=48)
    model = ModelHandle(transformer, "diffusion", variant=sana_variant(dict(transformer.config)))
    pos, pos_mask, neg, neg_mask = _conds()
    positive, negative = make_conditioning(pos, pos_mask), make_conditioning(neg, neg_mask)
    sigmas = CustomSigmas().schedule("1.0, 0.8, 0.45, 0.2")[0]
    latent = {"samples": torch.zeros(1, 32, 2, 2)}
    (out,) = SanaSampler().sample(model, positive, negative, latent, 5, 99, 3.0, 0.0, "flow_euler", 1.0,
                                           sigmas=sigmas)
    scheduler, plan = loop.prepare_custom_schedule("flow_euler", sigmas, torch.device("cpu"))
    predict = sana_velocity(transformer, positive, negative, 3.0, 1)
    with torch.inference_mode():
        expected = loop.sample_flow(predict, scheduler, plan, comfy_noise((1, 32, 2, 2), 5), None) / SANA_LATENT_SCALE
    assert len(plan.timesteps) == 4 and torch.equal(out["samples"], expected)  # a final 0 is appended
