"""Speed options: attention backends, step caches and torch.compile, for one run only.

A cache with a threshold equals the diffusers pipeline running the same diffusers cache hooks (WanPipeline with
`transformer.enable_cache(config)`; SanaPipeline, which has no cache support of its own, with the same hooks and one
cache context around the call), and really skips block computations; threshold 0 is the plain run exactly. After a
run the model carries no hooks, no compiled forwards and the process no changed attention backend.
"""

import copy

import pytest
import torch
from diffusers import SanaPipeline, WanPipeline
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, SeaCacheConfig, apply_first_block_cache
from diffusers.models.attention_dispatch import _AttentionBackendRegistry
from diffusers.models.cache_utils import CacheMixin
from tiny_sana import tiny_sana_transformer
from tiny_wan import tiny_wan_transformer
from torch._dynamo.utils import counters

import sana_wan
from sana_wan import comfy_bridge as bridge
from sana_wan.samplers import mag_ratios
from sana_wan.samplers import sana as sana_sampler
from sana_wan.samplers.conditioning import make_conditioning
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.sana import SANA_LATENT_SCALE, sample_sana
from sana_wan.samplers.schedulers import make_scheduler
from sana_wan.samplers.scm import sample_sana_sprint
from sana_wan.samplers.speed import SpeedOptions, attention_choices, repeated_blocks, speed_run
from sana_wan.samplers.wan import sample_wan
from sana_wan.vae.wan import to_raw

NODES = sana_wan.NODE_CLASS_MAPPINGS
STEPS, SEED = 10, 7
SANA_LATENT, WAN_LATENT = (1, 8, 4, 8), (1, 16, 2, 4, 6)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is many times faster than two on a CPU that other processes share."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sana():
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(1, 10, 32, generator=g), torch.randn(1, 10, 32, generator=g)
    pos_mask, neg_mask = torch.ones(1, 10, dtype=torch.int64), torch.ones(1, 10, dtype=torch.int64)
    pos_mask[:, 7:], neg_mask[:, 4:] = 0, 0
    return {"model": tiny_sana_transformer(num_layers=4), "pos": (pos, pos_mask), "neg": (neg, neg_mask)}


@pytest.fixture(scope="module")
def wan():
    g = torch.Generator().manual_seed(2)
    pos, neg = torch.randn(1, 8, 32, generator=g), torch.randn(1, 8, 32, generator=g)
    pos[:, 6:], neg[:, 3:] = 0, 0  # Wan's prompts are zero past their tokens
    return {"model": tiny_wan_transformer(num_layers=4, text_dim=32), "pos": pos, "neg": neg}


def _sana(sana, speed=None, cfg=4.5, steps=STEPS):
    with torch.inference_mode():
        out = sample_sana(sana["model"], {"samples": torch.zeros(SANA_LATENT)}, make_conditioning(*sana["pos"]),
                          make_conditioning(*sana["neg"]), SEED, steps, cfg, 3.0, "flow_euler", speed=speed)
    return out * SANA_LATENT_SCALE


def _wan(wan, speed=None, steps=STEPS, batched=False, model=None):
    mask = torch.ones(1, 8, dtype=torch.int64)
    with torch.inference_mode():
        return sample_wan(model or wan["model"], {"samples": torch.zeros(WAN_LATENT)},
                          make_conditioning(wan["pos"], mask), make_conditioning(wan["neg"], mask), SEED, steps, 5.0,
                          5.0, "flow_unipc", batched=batched, speed=speed)


def _sana_pipeline(sana, cache_config):
    """SanaPipeline with diffusers' First Block Cache hooks on a copy of the model; one context for all its
    (batched) forwards."""
    model = copy.deepcopy(sana["model"])
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model,
                        scheduler=make_scheduler("flow_euler", 3.0))
    pipe.set_progress_bar_config(disable=True)
    (pos, pos_mask), (neg, neg_mask) = sana["pos"], sana["neg"]
    apply_first_block_cache(model, cache_config)
    with torch.no_grad(), CacheMixin.cache_context(model, "cond_uncond"):
        return pipe(prompt_embeds=pos, prompt_attention_mask=pos_mask, negative_prompt=None,
                    negative_prompt_embeds=neg, negative_prompt_attention_mask=neg_mask,
                    latents=comfy_noise(SANA_LATENT, SEED), height=128, width=256, num_inference_steps=STEPS,
                    guidance_scale=4.5, use_resolution_binning=False, output_type="latent").images


def _wan_pipeline(wan, cache_config):
    """WanPipeline with the cache enabled on a copy of the model (diffusers leaves empty hook registries behind)."""
    model = copy.deepcopy(wan["model"])
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=model, vae=None,
                       scheduler=make_scheduler("flow_unipc", 5.0))
    pipe.set_progress_bar_config(disable=True)
    model.enable_cache(cache_config)
    with torch.no_grad():
        return to_raw(pipe(prompt_embeds=wan["pos"], negative_prompt_embeds=wan["neg"],
                           latents=comfy_noise(WAN_LATENT, SEED), height=32, width=48, num_frames=5,
                           num_inference_steps=STEPS, guidance_scale=5.0, output_type="latent").frames)


class BlockCalls:
    """Counts the computations of a block's feed-forward (a skipped block never reaches it)."""

    def __init__(self, module):
        self.count = 0
        self._handle = module.register_forward_pre_hook(self._seen)

    def _seen(self, module, args):
        self.count += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.remove()


# ---------------------------------------------------------------------------------------------- attention


def _backend_seen(module, seen):
    """Records diffusers' active backend and whether PyTorch's flash SDPA kernel is allowed, at each forward."""
    return module.register_forward_pre_hook(lambda m, a: seen.append(
        (_AttentionBackendRegistry._active_backend.value, torch.backends.cuda.flash_sdp_enabled())))


def test_cpu_attention_backends_equal_the_default_and_are_put_back(sana, wan):
    for family, run, model in (("sana", _sana, sana), ("wan", _wan, wan)):
        choices = attention_choices(family, "cpu", (torch.float32,))
        assert {"default", "native", "_native_math"} <= set(choices)
        assert "_native_cudnn" not in choices and "_native_efficient" not in choices, "CUDA-only SDPA kernels"
        reference = run(model, steps=3)
        for name in choices[1:]:
            seen = []
            handle = _backend_seen(model["model"], seen)
            try:
                out = run(model, SpeedOptions(attention=name), steps=3)
            finally:
                handle.remove()
            # another SDPA kernel sums in another order: float32 rounding, relative to the output's size
            assert (out - reference).abs().max() <= 1e-5 * reference.abs().max(), (family, name)
            assert seen[0] == (name, name in ("native", "_native_flash")), (family, name)
    assert _AttentionBackendRegistry._active_backend.value == "native"
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()


def test_unavailable_or_unsupported_options_are_clear_errors(sana, wan, monkeypatch):
    with pytest.raises(ValueError, match="'_native_cudnn' does not run on cpu"):
        _wan(wan, SpeedOptions(attention="_native_cudnn"), steps=1)
    with pytest.raises(ValueError, match="'xformers' does not run on cpu.*Choose one of"):
        _wan(wan, SpeedOptions(attention="xformers"), steps=1)
    with pytest.raises(ValueError, match="Unknown attention backend 'sage' for Sana.*SDPA"):
        _sana(sana, SpeedOptions(attention="sage"), steps=1)
    with pytest.raises(ValueError, match="mag cache is for Wan2.1 text-to-video"):
        _sana(sana, SpeedOptions(cache="mag"), steps=1)
    with pytest.raises(ValueError, match="calibrated for the model.*not for this 128-wide, 4-block"):
        _wan(wan, SpeedOptions(cache="mag"), steps=1)
    with pytest.raises(ValueError, match="cache must be one of"):
        SpeedOptions(cache="teacache")
    with pytest.raises(ValueError, match="threshold must be a number >= 0"):
        SpeedOptions(cache="first_block", threshold=-0.1)
    monkeypatch.setattr(sana_sampler, "control_run", lambda *args: object())  # as if a ControlNet were attached
    with pytest.raises(ValueError, match="does not combine with a Sana ControlNet"):
        _sana(sana, SpeedOptions(cache="first_block"), steps=1)
    monkeypatch.undo()
    sprint = tiny_sana_transformer("sprint")
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="too few for step caching"):
        sample_sana_sprint(sprint, {"samples": torch.zeros(1, 8, 2, 2)},
                           make_conditioning(torch.randn(1, 4, 32, generator=g), torch.ones(1, 4)), 0, 2,
                           speed=SpeedOptions(cache="first_block"))


def test_magcache_ratios_are_looked_up_for_the_real_wan_sizes():
    def config(width, layers, in_channels=16):
        return type("Config", (), {"num_attention_heads": width // 128, "attention_head_dim": 128,
                                   "num_layers": layers, "in_channels": in_channels, "out_channels": 16})

    assert mag_ratios.wan_mag_cache_settings(config(1536, 30)) == (mag_ratios.WAN_T2V_1_3B, 2)
    assert mag_ratios.wan_mag_cache_settings(config(5120, 40)) == (mag_ratios.WAN_T2V_14B, 6)
    with pytest.raises(ValueError, match="text-to-video 1.3B and 14B only"):
        mag_ratios.wan_mag_cache_settings(config(5120, 40, in_channels=36))  # image-to-video: never calibrated


# ---------------------------------------------------------------------------------------------- step caches


@pytest.mark.parametrize("cache", ["first_block", "mag", "sea"])
def test_wan_cache_threshold_zero_is_the_plain_run(wan, cache, monkeypatch):
    monkeypatch.setitem(mag_ratios.WAN_MAG_CACHE, (128, 4), (mag_ratios.WAN_T2V_1_3B, 2))
    assert torch.equal(_wan(wan, SpeedOptions(cache=cache, threshold=0.0)), _wan(wan))


def test_sana_cache_threshold_zero_is_the_plain_run(sana):
    assert torch.equal(_sana(sana, SpeedOptions(cache="first_block", threshold=0.0)), _sana(sana))


@pytest.mark.parametrize("cache, threshold", [("first_block", 0.5), ("mag", 0.12), ("sea", 0.4)])
def test_wan_cache_equals_wan_pipeline_with_the_same_hooks(wan, cache, threshold, monkeypatch):
    ratios, max_skips = mag_ratios.WAN_T2V_1_3B, 2
    monkeypatch.setitem(mag_ratios.WAN_MAG_CACHE, (128, 4), (ratios, max_skips))
    config = {"first_block": lambda: FirstBlockCacheConfig(threshold=threshold),
              "mag": lambda: MagCacheConfig(threshold=threshold, max_skip_steps=max_skips, retention_ratio=0.2,
                                            num_inference_steps=STEPS, mag_ratios=list(ratios)),
              "sea": lambda: SeaCacheConfig(threshold=threshold)}[cache]()
    with BlockCalls(wan["model"].blocks[-1].ffn) as calls:
        ours = _wan(wan, SpeedOptions(cache=cache, threshold=threshold))
    assert 0 < calls.count < 2 * STEPS, f"{calls.count} of {2 * STEPS} forwards computed: nothing was skipped"
    expected = _wan_pipeline(wan, config)
    assert (ours - expected).abs().max() <= 1e-5
    assert (ours - _wan(wan)).abs().max() > 1e-4, "the skipped steps change the result"


def test_wan_batched_cond_uncond_caches_as_one_forward(wan):
    """A batched [cond, uncond] forward has its own cache context ("cond_uncond"), skipped as a whole."""
    with BlockCalls(wan["model"].blocks[-1].ffn) as calls:
        _wan(wan, SpeedOptions(cache="first_block", threshold=0.5), batched=True)
    assert 0 < calls.count < STEPS
    assert torch.equal(_wan(wan, SpeedOptions(cache="first_block", threshold=0.0), batched=True),
                       _wan(wan, batched=True))


def test_sana_first_block_cache_equals_sana_pipeline_with_the_same_hooks(sana):
    with BlockCalls(sana["model"].transformer_blocks[-1].ff) as calls:
        ours = _sana(sana, SpeedOptions(cache="first_block", threshold=1.0))
    assert 0 < calls.count < STEPS
    expected = _sana_pipeline(sana, FirstBlockCacheConfig(threshold=1.0))
    assert (ours - expected).abs().max() <= 1e-5
    assert (ours - _sana(sana)).abs().max() > 1e-4


def test_caches_run_on_cast_on_call_blocks_and_refuse_vace(wan):
    """The low-VRAM layers (loaders/cast_layers.py) subclass the blocks; a VACE model adds hints a cache would
    count twice."""
    from diffusers import WanVACETransformer3DModel

    from sana_wan.loaders.cast_layers import install
    from sana_wan.samplers.speed import check_speed

    cast = install(copy.deepcopy(wan["model"]))
    assert type(cast.blocks[0]) is not type(wan["model"].blocks[0])
    for cache, threshold in (("first_block", 0.5), ("sea", 0.4)):
        options = SpeedOptions(cache=cache, threshold=threshold)
        assert torch.equal(_wan(wan, options, model=cast), _wan(wan, options))
    with torch.device("meta"):
        vace = WanVACETransformer3DModel(num_attention_heads=1, attention_head_dim=16, num_layers=2, vace_layers=[0],
                                         ffn_dim=32, text_dim=32, freq_dim=16)
    with pytest.raises(ValueError, match="does not combine with a Wan VACE model"):
        check_speed(SpeedOptions(cache="first_block"), vace, "wan", "cpu")


# ---------------------------------------------------------------------------------------------- the model after a run


def _leftovers(model):
    return [name for name, module in model.named_modules()
            if hasattr(module, "_diffusers_hook") or "forward" in module.__dict__]


def test_the_model_is_unchanged_after_a_run(wan, sana, monkeypatch):
    monkeypatch.setitem(mag_ratios.WAN_MAG_CACHE, (128, 4), (mag_ratios.WAN_T2V_1_3B, 2))
    plain_wan, plain_sana = _wan(wan), _sana(sana)
    weights = {k: v.clone() for k, v in wan["model"].state_dict().items()}
    for cache in ("first_block", "mag", "sea"):
        _wan(wan, SpeedOptions(attention="_native_math", cache=cache, threshold=0.5))
        assert _leftovers(wan["model"]) == [] and not wan["model"].is_cache_enabled
    _sana(sana, SpeedOptions(attention="_native_math", cache="first_block", threshold=1.0))
    assert _leftovers(sana["model"]) == []
    with pytest.raises(RuntimeError, match="mid-run"):
        with speed_run(wan["model"], SpeedOptions(cache="first_block", compile=True), "wan", STEPS):
            assert wan["model"].blocks[1]._diffusers_hook.hooks and "forward" in wan["model"].blocks[1].__dict__
            raise RuntimeError("mid-run")
    assert _leftovers(wan["model"]) == []
    assert all(torch.equal(v, weights[k]) for k, v in wan["model"].state_dict().items())
    assert torch.equal(_wan(wan), plain_wan) and torch.equal(_sana(sana), plain_sana)
    assert _AttentionBackendRegistry._active_backend.value == "native"


def test_compiled_blocks_equal_eager_and_compile_once(wan, sana):
    assert repeated_blocks(wan["model"]) == list(wan["model"].blocks)  # diffusers' _repeated_blocks
    assert repeated_blocks(sana["model"]) == list(sana["model"].transformer_blocks)  # Sana declares none
    eager = _wan(wan, steps=2)
    compiled = _wan(wan, SpeedOptions(compile=True), steps=2)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1 and (compiled - eager).abs().max() <= 1e-4
    again = _wan(wan, SpeedOptions(compile=True), steps=2)
    cached = _wan(wan, SpeedOptions(compile=True, cache="first_block", threshold=0.0), steps=2)
    assert counters["stats"]["unique_graphs"] == graphs, "a later run, with or without cache hooks, recompiled"
    assert torch.equal(again, compiled) and torch.equal(cached, compiled)
    assert _leftovers(wan["model"]) == [] and torch.equal(_wan(wan, steps=2), eager)


# ---------------------------------------------------------------------------------------------- nodes


def test_speed_nodes_clone_the_handle_and_check_the_options(wan, sana):
    for node, family, model in (("SanaSpeedOptions", "sana", sana), ("WanSpeedOptions", "wan", wan)):
        inputs = NODES[node].INPUT_TYPES()["required"]
        assert inputs["attention"][0][0] == "default" and inputs["attention"][1]["default"] == "default"
        assert inputs["cache"][1]["default"] == "none" and inputs["compile"][1]["default"] is False
        handle = bridge.ModelHandle(model["model"], "diffusion", family=family)
        (fast,) = NODES[node]().apply(handle, "_native_math", "first_block", 0.2, False)
        assert fast.info["speed"] == SpeedOptions("_native_math", "first_block", 0.2, False)
        assert "speed" not in handle.info and fast.module is handle.module and fast.patcher is not handle.patcher
        with pytest.raises(ValueError, match="does not run on cpu"):
            NODES[node]().apply(handle, "_native_cudnn", "none", 0.1, False)
    assert "mag" not in NODES["SanaSpeedOptions"].INPUT_TYPES()["required"]["cache"][0]
