"""Speed options of a sampling run: attention backend, step caching, torch.compile of the transformer blocks.

Each option is diffusers' or PyTorch's own mechanism, applied to the transformer from outside for one run: diffusers'
attention dispatcher (with PyTorch's SDPA kernel choice), diffusers' cache hooks (First Block Cache, MagCache,
SeaCache) and regional torch.compile. `speed_run` applies them and takes them off again when the run ends, so a
loaded model that other branches of the graph share runs afterwards exactly as before.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.hooks import (
    FirstBlockCacheConfig,
    HookRegistry,
    MagCacheConfig,
    SeaCacheConfig,
    apply_first_block_cache,
    apply_mag_cache,
    apply_sea_cache,
)
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK
from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK
from diffusers.hooks.sea_cache import (
    _SEA_CACHE_BLOCK_HOOK,
    _SEA_CACHE_LEADER_BLOCK_HOOK,
    _SEA_CACHE_POST_NORM_HOOK,
    _SEA_CACHE_ROOT_HOOK,
)
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    _check_attention_backend_requirements,
    attention_backend,
    dispatch_attention_fn,
)
from diffusers.models.cache_utils import CacheMixin
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..loaders.cast_layers import execution_device
from .mag_ratios import wan_mag_cache_settings

DEFAULT_ATTENTION = "default"
# diffusers' PyTorch-SDPA backends and the SDPA kernel each one pins ("native" lets PyTorch pick).
SDPA_BACKENDS = {
    "native": None,
    "_native_math": SDPBackend.MATH,
    "_native_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "_native_flash": SDPBackend.FLASH_ATTENTION,
    "_native_cudnn": SDPBackend.CUDNN_ATTENTION,
}
# The rest of diffusers' backends, where their package is installed. Left out: the *_hub ones (they download kernels
# from the Hub on first use) and flex (without torch.compile it is PyTorch's unfused reference, slower than native).
KERNEL_BACKENDS = ("flash", "flash_varlen", "_flash_3", "_flash_varlen_3", "sage", "sage_varlen",
                   "_sage_qk_int8_pv_fp8_cuda", "_sage_qk_int8_pv_fp8_cuda_sm90", "_sage_qk_int8_pv_fp16_cuda",
                   "_sage_qk_int8_pv_fp16_triton", "xformers")
CACHES = ("none", "first_block", "mag", "sea")
# The hooks each cache registers (the names diffusers' CacheMixin.disable_cache removes).
_CACHE_HOOKS = {
    "first_block": (_FBC_LEADER_BLOCK_HOOK, _FBC_BLOCK_HOOK),
    "mag": (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK),
    "sea": (_SEA_CACHE_POST_NORM_HOOK, _SEA_CACHE_BLOCK_HOOK, _SEA_CACHE_LEADER_BLOCK_HOOK, _SEA_CACHE_ROOT_HOOK),
}
_MAG_CACHE_RETENTION = 0.2  # the fraction of first steps MagCache never skips (the authors' R02)


@dataclass(frozen=True)
class SpeedOptions:
    """What a Speed Options node sets; the defaults change nothing.

    Args:
        attention: a diffusers attention backend name (see `attention_choices`), or "default" to leave it alone.
        cache: "none", "first_block" (First Block Cache, ParaAttention's dynamic cache after TeaCache), "mag"
            (MagCache, Wan2.1 text-to-video only) or "sea" (SeaCache, Wan2.1 text-to-video only).
        threshold: the cache's skip threshold; higher skips more steps. 0 never skips.
        compile: torch.compile the repeated transformer blocks (regional compilation).
    """

    attention: str = DEFAULT_ATTENTION
    cache: str = "none"
    threshold: float = 0.1
    compile: bool = False

    def __post_init__(self):
        if self.cache not in CACHES:
            raise ValueError(f"cache must be one of {list(CACHES)}, got {self.cache!r}.")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not math.isfinite(self.threshold) or self.threshold < 0:
            raise ValueError(f"The cache threshold must be a number >= 0, got {self.threshold!r}.")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be true or false, got {self.compile!r}.")


# ---------------------------------------------------------------------------------------------- attention backends


@functools.lru_cache(maxsize=None)
def _probe(backend: str, family: str, device: str, dtype: torch.dtype) -> str | None:
    """None when `backend` computes a small attention the way `family` calls it on `device` in `dtype`; else why not.

    Wan's attention goes through diffusers' dispatcher. Sana's does not: its self-attention is linear attention
    (matrix products, no softmax) and its cross-attention calls PyTorch's SDPA itself, with the prompt's padding
    mask, so for Sana only the SDPA kernel choice applies, to the cross-attention. The head sizes are the models'
    (Sana's cross-attention 112, Wan 128): some kernels take only some.
    """
    q = torch.randn(1, 16, 2, 112 if family == "sana" else 128, device=device, dtype=dtype)
    try:  # whatever goes wrong here means the backend does not run here; the message says why
        _check_attention_backend_requirements(AttentionBackendName(backend))
        if family == "sana":
            mask = torch.zeros(1, 2, 1, 16, device=device, dtype=dtype)
            with _sdpa_kernel(backend):
                F.scaled_dot_product_attention(q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2), mask)
        else:
            dispatch_attention_fn(q, q, q, backend=AttentionBackendName(backend))
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return None


def _candidates(family: str) -> tuple[str, ...]:
    return tuple(SDPA_BACKENDS) + (KERNEL_BACKENDS if family == "wan" else ())


def attention_choices(family: str, device, dtypes=(torch.float32, torch.bfloat16, torch.float16)) -> list[str]:
    """"default" and the backends that run on `device` in at least one of `dtypes`, for a node's combo."""
    return [DEFAULT_ATTENTION] + [name for name in _candidates(family)
                                  if any(_probe(name, family, str(device), dtype) is None for dtype in dtypes)]


def check_attention(name: str, family: str, device, dtype: torch.dtype) -> None:
    """ValueError unless backend `name` runs for this family's model on `device` in `dtype`."""
    if name == DEFAULT_ATTENTION:
        return
    if name not in _candidates(family):
        known = "PyTorch's SDPA kernels (Sana calls SDPA itself)" if family == "sana" else "diffusers' backends"
        raise ValueError(f"Unknown attention backend {name!r} for {family.capitalize()}; it takes {known}: "
                         f"{attention_choices(family, device)}.")
    why = _probe(name, family, str(device), dtype)
    if why is not None:
        raise ValueError(f"The attention backend {name!r} does not run on {device} in {dtype}: {why}. Choose one of "
                         f"{attention_choices(family, device, (dtype,))}.")


def _sdpa_kernel(name: str):
    kernel = SDPA_BACKENDS.get(name)
    return sdpa_kernel(kernel) if kernel is not None else contextlib.nullcontext()


@contextlib.contextmanager
def _attention(name: str):
    """diffusers' active backend (a process-wide setting, put back on exit) for the dispatcher, and the same SDPA
    kernel pinned for code that calls SDPA directly (Sana's cross-attention)."""
    if name == DEFAULT_ATTENTION:
        yield
        return
    with attention_backend(name), _sdpa_kernel(name):
        yield


# ---------------------------------------------------------------------------------------------- step caches


def _block_metadata(cls: type) -> TransformerBlockMetadata | None:
    try:
        return TransformerBlockRegistry.get(cls)
    except ValueError:
        return None


def register_blocks(transformer) -> None:
    """Tell diffusers' block hooks (caches, layer skipping) what this model's blocks take and return. The hooks look
    a block's class up exactly: diffusers registers Wan's block class but not Sana's (SanaTransformer2DModel has no
    CacheMixin), and the cast-on-call layers (loaders/cast_layers.py) are subclasses. A class gets its nearest registered base's
    entry, else Sana's (the block returns the hidden states alone). Adds entries to diffusers' registry only."""
    for cls in {type(block) for block in repeated_blocks(transformer)}:
        if _block_metadata(cls) is None:
            base = next((_block_metadata(c) for c in cls.__mro__[1:] if _block_metadata(c) is not None), None)
            fields = {"return_hidden_states_index": 0} if base is None else {
                "return_hidden_states_index": base.return_hidden_states_index,
                "return_encoder_hidden_states_index": base.return_encoder_hidden_states_index}
            TransformerBlockRegistry.register(cls, TransformerBlockMetadata(**fields))


def _cache_config(options: SpeedOptions, transformer, family: str, calls: int):
    """(config, apply function) of diffusers' hooks for the chosen cache; ValueError where the model has no support."""
    if hasattr(transformer, "vace_blocks"):
        raise ValueError("Step caching does not combine with a Wan VACE model: the cached residual already holds the "
                         "VACE hints, which the model adds again. Set the cache to none in Wan Speed Options.")
    register_blocks(transformer)
    if options.cache == "first_block":
        return FirstBlockCacheConfig(threshold=options.threshold), apply_first_block_cache
    if family != "wan" or transformer.config.in_channels != transformer.config.out_channels:
        raise ValueError(f"The {options.cache} cache is for Wan2.1 text-to-video models only (diffusers' MagCache "
                         "needs calibrated ratios, its SeaCache a video latent); use first_block here.")
    if options.cache == "mag":
        ratios, max_skips = wan_mag_cache_settings(transformer.config)
        return MagCacheConfig(threshold=options.threshold, max_skip_steps=max_skips,
                              retention_ratio=_MAG_CACHE_RETENTION, num_inference_steps=calls,
                              mag_ratios=list(ratios)), apply_mag_cache
    return SeaCacheConfig(threshold=options.threshold), apply_sea_cache


@contextlib.contextmanager
def _cached(transformer, config, apply, hooks: tuple[str, ...]):
    """diffusers' cache hooks on the transformer for the run (what `enable_cache` / `disable_cache` do, which Sana's
    transformer lacks); afterwards the hooks, their cached tensors and the registries they needed are gone."""
    had_registry = {module for module in transformer.modules() if hasattr(module, "_diffusers_hook")}
    had_forward = {module for module in transformer.modules() if "forward" in module.__dict__}
    apply(transformer, config)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.invalidate_child_registries_cache()
    try:
        yield
    finally:
        for name in hooks:
            registry.remove_hook(name, recurse=True)
        registry.invalidate_child_registries_cache()
        for module in transformer.modules():  # removing a hook leaves the bound forward as an instance attribute
            if module not in had_registry and hasattr(module, "_diffusers_hook") and not module._diffusers_hook.hooks:
                del module._diffusers_hook
            if module not in had_forward and "forward" in module.__dict__:
                del module.forward


# ---------------------------------------------------------------------------------------------- torch.compile


def repeated_blocks(transformer) -> list[torch.nn.Module]:
    """The blocks regional compilation compiles: diffusers' `_repeated_blocks` classes (Wan), else the blocks of the
    `transformer_blocks` list (Sana declares none)."""
    names = getattr(transformer, "_repeated_blocks", None) or ()
    blocks = [module for module in transformer.modules() if type(module).__name__ in names]
    return blocks or list(getattr(transformer, "transformer_blocks", ()))


@contextlib.contextmanager
def _compiled(transformer):
    """Each repeated block's forward compiled for the run, the plain forward back afterwards.

    The block's own forward is compiled (not the module call, as diffusers' compile_repeated_blocks does), so cache
    hooks set on top of it stay outside the graph: every block then shares one graph, with or without a cache. The
    graphs live in torch.compile's cache of the block class's code, so the next run (and any model of the same
    architecture) reuses them without compiling again.
    """
    blocks = repeated_blocks(transformer)
    previous = [block.__dict__.get("forward") for block in blocks]
    for block in blocks:
        block.forward = torch.compile(block.forward)
    try:
        yield
    finally:
        for block, forward in zip(blocks, previous):
            if forward is None:
                del block.forward
            else:
                block.forward = forward


# ---------------------------------------------------------------------------------------------- one run


class SpeedRun:
    """The speed settings in force during one run; the velocity functions ask it for each forward's cache context."""

    def __init__(self, transformer, caching: bool):
        self._transformer = transformer
        self._caching = caching
        self._position: dict = {}

    def context(self, name: str):
        """The cache context of one forward, named as diffusers' pipelines name theirs ("cond", "uncond", and
        "cond_uncond" for a batched pair), with the step fields WanPipeline passes. Each name keeps its own cache
        state, so forwards of different batches never share cached residuals."""
        if not self._caching:
            return contextlib.nullcontext()
        # CacheMixin.cache_context as a plain function: Sana's transformer has no CacheMixin, and the method uses
        # nothing of the mixin.
        return CacheMixin.cache_context(self._transformer, name, **self._position)

    def track(self, predict, schedule, start: int = 0):
        """`predict` that first records which model call of the schedule it is (the step index and sigma a cache
        context carries); sample_flow calls it once per model call, in order, from call `start` on (a Wan2.2
        low-noise expert takes over mid-run)."""
        if not self._caching:
            return predict
        calls = itertools.count(start)

        def tracked(x, t, step, total):
            index = next(calls)
            self._position = {"step_index": index, "sigma": float(schedule.sigmas[index]),
                              "num_inference_steps": len(schedule.timesteps)}
            return predict(x, t, step, total)

        return tracked


NO_SPEED = SpeedRun(None, caching=False)  # what a velocity function uses outside speed_run


def check_speed(options: SpeedOptions, transformer, family: str, device=None) -> None:
    """The checks of `speed_run`, for a node to run before anything is loaded (`device`: where it will run)."""
    device = device if device is not None else execution_device(transformer)
    check_attention(options.attention, family, device, transformer.dtype)
    if options.cache != "none":
        _cache_config(options, transformer, family, 1)


@contextlib.contextmanager
def speed_run(transformer, options: SpeedOptions | None, family: str, calls: int):
    """Apply `options` to `transformer` ("sana" or "wan" `family`) for a run of `calls` model calls; yields the
    SpeedRun. On exit the model is as it was: backend restored, hooks removed, blocks uncompiled."""
    options = options if options is not None else SpeedOptions()
    check_attention(options.attention, family, execution_device(transformer), transformer.dtype)
    cache = _cache_config(options, transformer, family, calls) if options.cache != "none" else None
    with contextlib.ExitStack() as stack:
        stack.enter_context(_attention(options.attention))
        if options.compile:
            stack.enter_context(_compiled(transformer))
        if cache is not None:
            stack.enter_context(_cached(transformer, *cache, _CACHE_HOOKS[options.cache]))
        yield SpeedRun(transformer, cache is not None)
