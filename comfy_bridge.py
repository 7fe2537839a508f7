"""The one module that talks to ComfyUI.

Everything ComfyUI-specific goes through here: model patchers and `load_models_gpu`, the devices and dtypes ComfyUI
chooses, progress bars, interrupts, latent previews and the model folders. When ComfyUI is not importable (unit
tests, scripts) each function falls back to a plain standalone behaviour, so the library runs without it.
"""

from __future__ import annotations

import functools
import importlib
import os
import uuid

import torch

from .loaders.cast_layers import SCALE, install, place_within, set_execution_device
from .loaders.weight_patches import patch_weights, standalone_patches
from .video.files import check_filename_prefix


def _comfy(module: str):
    """Import a ComfyUI module, or None when the pack runs outside ComfyUI."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def in_comfyui() -> bool:
    return _comfy("comfy.model_management") is not None


# ---------------------------------------------------------------------------------------------- devices and dtypes

_ROLE_DEVICES = {
    "diffusion": ("get_torch_device", "unet_offload_device"),
    "text_encoder": ("text_encoder_device", "text_encoder_offload_device"),
    "vae": ("vae_device", "vae_offload_device"),
}


def devices(role: str) -> tuple[torch.device, torch.device]:
    """(load device, offload device) ComfyUI picks for a model of this role; CPU for both standalone."""
    mm = _comfy("comfy.model_management")
    if mm is None:
        device = torch.device(os.environ.get("SANA_WAN_DEVICE", "cpu"))
        return device, torch.device("cpu")
    load_fn, offload_fn = _ROLE_DEVICES[role]
    return getattr(mm, load_fn)(), getattr(mm, offload_fn)()


def compute_dtype(role: str, device: torch.device, supported: list[torch.dtype], params: int = 0) -> torch.dtype:
    """The dtype ComfyUI would run a model of this role in (honours --bf16-unet, --fp32-vae, ...); fp32 on CPU."""
    mm = _comfy("comfy.model_management")
    if mm is None:
        return torch.float32 if device.type == "cpu" else supported[0]
    if role == "diffusion":
        return mm.unet_dtype(device=device, model_params=params, supported_dtypes=supported)
    if role == "vae":
        return mm.vae_dtype(device=device, allowed_dtypes=supported)
    if device.type == "cpu":
        return torch.float32
    for dtype in supported:
        if dtype == torch.bfloat16 and mm.should_use_bf16(device, model_params=params):
            return dtype
        if dtype == torch.float16 and mm.should_use_fp16(device, model_params=params):
            return dtype
    return torch.float32


def memory_fits(required: int, device: torch.device) -> bool:
    """Whether `required` more bytes fit on the device now, by ComfyUI's free-memory figure (False standalone)."""
    mm = _comfy("comfy.model_management")
    return mm is not None and mm.get_free_memory(device) >= required


def total_memory(device: torch.device) -> int:
    """Bytes the device has in all (RAM for the CPU), by ComfyUI's figure; what is free at the moment plays no part."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        return mm.get_total_memory(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def intermediate_device() -> torch.device:
    """Where IMAGE and LATENT outputs live between nodes."""
    mm = _comfy("comfy.model_management")
    return mm.intermediate_device() if mm is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------------------- model patchers


class StandalonePatcher:
    """The part of ComfyUI's ModelPatcher the pack uses, for running without ComfyUI."""

    def __init__(self, model: torch.nn.Module, load_device: torch.device, offload_device: torch.device):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.patches: dict[str, list] = {}  # parameter -> weight patches, applied on load (see patch_weights)
        self.patches_uuid = uuid.uuid4()
        self.weight_budget: int | None = None  # bytes of weights load() may put on the load device; None: all

    def model_size(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values())

    def clone(self) -> "StandalonePatcher":
        clone = StandalonePatcher(self.model, self.load_device, self.offload_device)
        clone.patches = {key: patches[:] for key, patches in self.patches.items()}
        clone.patches_uuid = self.patches_uuid
        clone.weight_budget = self.weight_budget
        return clone

    def unload(self) -> None:
        self.model.to(self.offload_device)

    def load(self) -> None:
        """All weights on the load device; with a weight budget the largest layers within it and the others on the
        offload device, copied for each call (ComfyUI's partial loading, standalone)."""
        if self.weight_budget is None:
            self.model.to(self.load_device)
        else:
            place_within(self.model, self.weight_budget, self.load_device, self.offload_device)

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list[str]:
        """ComfyUI's ModelPatcher.add_patches: weight patches on top of the earlier ones, applied on the next load."""
        parameters = dict(self.model.named_parameters())
        added = [key for key in patches if key in parameters]
        for key in added:
            self.patches.setdefault(key, []).append((strength_patch, patches[key], strength_model, None, None))
        self.patches_uuid = uuid.uuid4()
        return added


def make_patcher(holder: torch.nn.Module, role: str):
    """One ModelPatcher over a plain holder module (never the diffusers model itself: its `device` is read-only).

    The model's layers become cast-on-call layers (loaders/cast_layers.py), which ComfyUI's partial loading treats as
    it treats `comfy.ops` layers: those it leaves on the offload device are copied for each call, by ComfyUI's own
    copy (non-blocking, on its offload streams under --async-offload). The patcher is the one ComfyUI makes its own
    models with (`CoreModelPatcher`: its dynamic VRAM patcher where that is on, 0.33+).
    """
    load_device, offload_device = devices(role)
    mp = _comfy("comfy.model_patcher")
    install(holder, _comfy_caster(), _dynamic_vram_fetch if mp is not None else None)
    if mp is None:
        return StandalonePatcher(holder, load_device, offload_device)
    return _patcher_class(load_device)(holder, load_device=load_device, offload_device=offload_device)


def _patcher_class(load_device: torch.device) -> type:
    """The (budget-capable) ModelPatcher class ComfyUI would use on `load_device`: its dynamic VRAM patcher when
    ComfyUI runs with it and the device is not the CPU (where ComfyUI itself falls back to the plain one)."""
    mp = _comfy("comfy.model_patcher")
    core = getattr(mp, "CoreModelPatcher", mp.ModelPatcher)
    if core is mp.ModelPatcher or torch.device(load_device).type == "cpu":
        return _budgeted(mp.ModelPatcher)
    return core


def is_dynamic(patcher) -> bool:
    """Whether ComfyUI's dynamic VRAM (0.33+) manages this patcher's weights."""
    return bool(getattr(patcher, "is_dynamic", lambda: False)())


def _dynamic_vram_fetch(module: torch.nn.Module, device: torch.device):
    """A layer's weight and bias for one call, fetched as ComfyUI's own layers fetch them under dynamic VRAM.

    ComfyUI 0.33's ModelPatcherDynamic leaves the weight and bias of castable layers where they are and gives each a
    slot in its virtual VRAM (`_v`); `comfy.ops.cast_bias_weight` stages them there (pinned copies, offload streams)
    and applies the LoRA patches it attached (`weight_lowvram_function`) and weight wrappers (`weight_function`).
    Scaled fp8 layers are fetched unpatched, then scaled and patched as the layer does it (`ScaledCastOnCall.finish`:
    LoRA applies to the real weight, rounded back as in a full load). Returns None for
    layers the dynamic patcher does not manage, which the layer then casts itself.
    """
    if getattr(module, "_v", None) is None or device.type == "cpu" or module.weight.device == device:
        return None
    ops = _comfy("comfy.ops")
    dtype = module.upcast_dtype or module.weight.dtype
    bias_dtype = module.bias.dtype if module.bias is not None else None
    if SCALE not in module._buffers:
        weight, bias, state = ops.cast_bias_weight(module, None, dtype=dtype, device=device, bias_dtype=bias_dtype,
                                                   offloadable=True)
    else:
        patch, functions = getattr(module, "weight_lowvram_function", None), module.weight_function
        module.weight_lowvram_function, module.weight_function = None, []
        try:
            weight, bias, state = ops.cast_bias_weight(module, None, dtype=dtype, device=device,
                                                       bias_dtype=bias_dtype, offloadable=True)
        finally:
            module.weight_lowvram_function, module.weight_function = patch, functions
        weight = module.finish("weight", weight, ([patch] if patch is not None else []) + list(functions))
    return {"weight": weight, "bias": bias}, lambda: ops.uncast_bias_weight(module, weight, bias, state)


def _comfy_caster():
    """ComfyUI's weight copy for cast-on-call layers; None standalone (a plain `.to`)."""
    mm = _comfy("comfy.model_management")
    if mm is None:
        return None

    def cast(items: list, device: torch.device) -> list[torch.Tensor]:
        stream = mm.get_offload_stream(device)
        non_blocking = mm.device_supports_non_blocking(device)
        tensors = [mm.cast_to(tensor, dtype, device, non_blocking=non_blocking, copy=copy, stream=stream)
                   for tensor, dtype, copy in items]
        mm.sync_stream(device, stream)
        return tensors

    return cast


@functools.cache
def _budgeted(model_patcher: type) -> type:
    class BudgetedModelPatcher(model_patcher):
        """ComfyUI's ModelPatcher with an optional cap, `weight_budget` bytes, on the weights it loads onto the load
        device (Model Memory Options): ComfyUI's own partial loading, asked for no more than the budget."""

        weight_budget: int | None = None

        def clone(self, *args, **kwargs):
            clone = super().clone(*args, **kwargs)
            clone.weight_budget = self.weight_budget
            return clone

        def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
            if self.weight_budget is not None:
                extra_memory = min(extra_memory, max(0, self.weight_budget - self.loaded_size()))
            return super().partially_load(device_to, extra_memory, force_patch_weights=force_patch_weights)

        def load(self, *args, **kwargs):
            _drop_dynamic_slots(self.model)
            return super().load(*args, **kwargs)

    return BudgetedModelPatcher


def _drop_dynamic_slots(model: torch.nn.Module) -> None:
    """Before a plain patcher loads weights a dynamic VRAM patcher managed (a Memory Options clone): the layers'
    virtual-VRAM slots and the LoRA functions that patcher attached go, so no call fetches through them (the dynamic
    patcher makes new ones when it loads again, as it does after its own force loads)."""
    for module in model.modules():
        slot = module.__dict__.pop("_v", None)
        if slot is not None:
            _comfy("comfy_aimdo.model_vbar").vbar_unpin(slot)
        for name in ("weight_lowvram_function", "bias_lowvram_function"):
            module.__dict__.pop(name, None)


def load_models(patchers: list, memory_required: int = 0) -> None:
    """Put models on their load device through ComfyUI's VRAM manager, which evicts others to make room.

    ComfyUI loads a model whole when it fits and partially otherwise (--lowvram, --novram, too little free VRAM, a
    weight budget), as its own models: the layers left on the offload device are cast on call, and the model's
    inputs go to its load device either way (`loaders.cast_layers.execution_device`).
    """
    mm = _comfy("comfy.model_management")
    if mm is None:
        for patcher in patchers:
            patcher.load()
            patch_weights(patcher)
    else:
        for patcher in patchers:
            _leave_other_device(patcher)
            _release_sharers(patcher.model)  # a native MODEL adapter over the same weights
        mm.load_models_gpu(patchers, memory_required=memory_required)
    for patcher in patchers:
        set_execution_device(patcher.model.module, patcher.load_device)


def hand_over(old: "ModelHandle", new: "ModelHandle", memory_required: int = 0) -> torch.nn.Module:
    """`new` on its load device after `old` left it: ComfyUI unloads `old` as it does to make room (LoRA patches
    restored, weights back on the offload device), then loads `new` through its VRAM manager, so the two never hold
    the device at once (two Wan2.2 A14B experts). Returns `new`'s model."""
    mm = _comfy("comfy.model_management")
    if mm is None:
        old.patcher.unload()
    else:
        loaded = getattr(mm, "current_loaded_models", [])
        for i in reversed(range(len(loaded))):
            if loaded[i].model is old.patcher:
                loaded.pop(i).model_unload()
    return new.load(memory_required)


def _leave_other_device(patcher) -> None:
    """Clones with different load devices (a text encoder moved to the CPU) share the weights; ComfyUI would take
    weights another clone loaded elsewhere as loaded, so they go back to the offload device first."""
    holder = patcher.model
    if getattr(holder, "model_loaded_weight_memory", 0) and holder.device != patcher.load_device:
        patcher.detach()


def with_memory_options(handle: "ModelHandle", load_on_cpu: bool = False,
                        weight_budget: int | None = None) -> "ModelHandle":
    """A clone of `handle` that runs on the CPU (`load_on_cpu`) and / or keeps at most `weight_budget` bytes of its
    weights on the load device, the others on the offload device, copied layer by layer for each call (ComfyUI's
    partial loading). The defaults change nothing.

    Under ComfyUI's dynamic VRAM, which has no budget and no CPU load device, such a clone is a plain ModelPatcher
    over the same weights (ComfyUI's own `clone(disable_dynamic=True)`).
    """
    if weight_budget is not None and weight_budget < 0:
        raise ValueError(f"The weight budget must be 0 bytes or more, got {weight_budget}.")
    clone = handle.clone(memory_options={"load_on_cpu": load_on_cpu, "weight_budget": weight_budget})
    if (load_on_cpu or weight_budget is not None) and is_dynamic(clone.patcher):
        plain = clone.patcher.clone(disable_dynamic=True, model_override=clone.patcher.get_clone_model_override())
        plain.__class__ = _budgeted(type(plain))
        clone.patcher = plain
    if load_on_cpu:
        clone.patcher.load_device = torch.device("cpu")
    clone.patcher.weight_budget = weight_budget
    return clone


class _Holder(torch.nn.Module):
    """The plain module a ModelPatcher wraps; ComfyUI assigns attributes (`device`, ...) on it freely."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module


class ModelHandle:
    """What flows between nodes as SANA_MODEL, DCAE_VAE, ...: one loaded model and its one ModelPatcher.

    ComfyUI tracks loaded models by patcher identity, so the handle keeps the same patcher for its whole life.
    `info` carries what nodes need to know about the model (variant, default shift, ...).
    """

    def __init__(self, module: torch.nn.Module, role: str, **info):
        self.patcher = make_patcher(_Holder(module), role)
        self.info = info

    def clone(self, **info_updates) -> "ModelHandle":
        """A new handle on the same weights (ComfyUI's `ModelPatcher.clone`), with `info` updated.

        Nodes that change how a model runs (LoRA, memory or speed options) return a clone: the loader's cached
        handle, which other branches of the graph may use, stays as it was.
        """
        handle = ModelHandle.__new__(ModelHandle)
        handle.patcher = self.patcher.clone()
        handle.info = {**self.info, **info_updates}
        return handle

    @property
    def module(self) -> torch.nn.Module:
        return self.patcher.model.module

    def load(self, memory_required: int = 0) -> torch.nn.Module:
        """The model on its load device, after ComfyUI made room for it and `memory_required` activations."""
        load_models([self.patcher], memory_required)
        return self.module


# ---------------------------------------------------------------------------------------------- weight patches (LoRA)

_HOLDER_PREFIX = "module."  # state-dict prefix of the wrapped model inside _Holder


def with_weight_patches(handle: ModelHandle, tensors: dict, layers: dict[str, str], strength: float) -> ModelHandle:
    """A clone of `handle` carrying a LoRA's weight patches at `strength`; the loaded model itself is not touched.

    `tensors` are the LoRA's tensors as `<layer>.<ending>` with the endings ComfyUI's `comfy.lora.load_lora` reads and
    `layers` maps each layer to the wrapped model's parameter it changes (loaders.lora.fit_lora). In ComfyUI, load_lora
    builds the patches (LoRA, LoHa, LoKr, DoRA, diff) and the ModelPatcher applies them when the model loads and
    restores the weights when a clone with other patches loads. Standalone, LoRA and diff patches are built and
    applied the same way by loaders/weight_patches.py.
    """
    keys = {layer: _HOLDER_PREFIX + parameter for layer, parameter in layers.items()}
    lora = _comfy("comfy.lora")
    if lora is not None:
        patches = lora.load_lora(tensors, keys, log_missing=False)
    else:
        patches = standalone_patches(tensors, keys)
    clone = handle.clone()
    clone.patcher.add_patches(patches, strength)
    return clone


# ---------------------------------------------------------------------------------------------- native MODEL adapter


def native_model(handle: ModelHandle, spec):
    """ComfyUI's MODEL over the handle's transformer, so its own KSampler and model patches drive it.

    A ModelPatcher over a `comfy.model_base.BaseModel` (ModelType.FLOW, `spec.shift` in its model_sampling) whose
    `diffusion_model` is the handle's diffusers module itself (same weights, no copy): its cast-on-call layers are
    what ComfyUI's partial loading looks for. `spec` (samplers.native.NativeSpec) turns ComfyUI's model call into the
    transformer's. The handle's devices, weight budget and LoRA patches carry over.
    """
    mp = _comfy("comfy.model_patcher")
    if mp is None:
        raise ValueError("The MODEL adapter works inside ComfyUI only: MODEL is ComfyUI's type, for its samplers.")
    base_class, patcher_class = _native_classes()
    patcher = patcher_class(base_class(spec, handle.module), load_device=handle.patcher.load_device,
                            offload_device=handle.patcher.offload_device)
    patcher.weight_budget = getattr(handle.patcher, "weight_budget", None)
    patcher.patches = {_NATIVE_PREFIX + key.removeprefix(_HOLDER_PREFIX): patches[:]
                       for key, patches in handle.patcher.patches.items()}
    return patcher


_NATIVE_PREFIX = "diffusion_model."  # state-dict prefix of the transformer inside the adapter's BaseModel


@functools.cache
def _native_classes() -> tuple[type, type]:
    mb, conds, formats = _comfy("comfy.model_base"), _comfy("comfy.conds"), _comfy("comfy.latent_formats")
    mm, mp, models_base = (_comfy(m) for m in ("comfy.model_management", "comfy.model_patcher",
                                               "comfy.supported_models_base"))

    class NativeConfig(models_base.BASE):
        unet_extra_config = {}

    class NativeModel(mb.BaseModel):
        """BaseModel whose diffusion_model is a diffusers transformer, called through the spec's forward."""

        def __init__(self, spec, module: torch.nn.Module):
            config = NativeConfig({"disable_unet_model_creation": True})
            config.sampling_settings = {"shift": spec.shift, "multiplier": 1000}
            if spec.family == "wan":  # raw VAE latents in LATENT, normalised here; RGB previews
                config.latent_format = formats.Wan22() if spec.per_frame_timesteps else formats.Wan21()
            else:  # raw DC-AE latents x scale; no RGB factors, so ComfyUI shows no latent2rgb preview
                config.latent_format = formats.LatentFormat()
                config.latent_format.latent_channels = spec.latent_channels
                config.latent_format.scale_factor = spec.latent_scale
            super().__init__(config, mb.ModelType.FLOW)
            self.diffusion_model = module
            self.spec = spec
            self.image_to_video = spec.image_to_video  # read by WAN21.concat_cond

        def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                         **kwargs):
            dtype = self.get_dtype()
            xc = self.model_sampling.calculate_input(t, x).to(dtype)
            context = mm.cast_to_device(c_crossattn, xc.device, dtype)
            mask = kwargs.get("attention_mask")
            mask = None if mask is None else mask.to(xc.device)
            image = {}
            if self.spec.image_to_video:
                clip = kwargs.get("clip_fea")
                image = {"concat": None if c_concat is None else mm.cast_to_device(c_concat, xc.device, dtype),
                         "clip_features": None if clip is None else mm.cast_to_device(clip, xc.device, torch.float32)}
            timestep = t
            if self.spec.per_frame_timesteps:  # TI2V-5B: 0 on given frames, as ComfyUI's WAN22
                timestep = mb.WAN22.process_timestep(self, t, x, kwargs.get("denoise_mask"))
            out = self.spec.forward(xc, self.model_sampling.timestep(timestep).float(), context, mask,
                                    **image).float()
            return self.model_sampling.calculate_denoised(t, out, x)

        def concat_cond(self, **kwargs):
            # ComfyUI's own Wan2.1 image-to-video inputs (mask and image latents) from the CONDITIONING.
            return mb.WAN21.concat_cond(self, **kwargs) if self.spec.image_to_video else None

        def extra_conds(self, **kwargs):
            out = super().extra_conds(**kwargs)
            # CONDRegular: prompts of different lengths run as separate batches, never padded by repetition.
            if kwargs.get("cross_attn") is not None:
                out["c_crossattn"] = conds.CONDRegular(kwargs["cross_attn"])
            if self.spec.uses_mask and kwargs.get("attention_mask") is not None:
                out["attention_mask"] = conds.CONDRegular(kwargs["attention_mask"])
            if self.spec.image_to_video and kwargs.get("clip_vision_output") is not None:
                out["clip_fea"] = conds.CONDRegular(kwargs["clip_vision_output"].penultimate_hidden_states)
            if self.spec.per_frame_timesteps and kwargs.get("denoise_mask") is not None:
                out["denoise_mask"] = conds.CONDRegular(kwargs["denoise_mask"])
            return out

        def scale_latent_inpaint(self, sigma, noise, latent_image, **kwargs):
            if self.spec.per_frame_timesteps:  # given frames stay clean, as ComfyUI's WAN22
                return latent_image
            return super().scale_latent_inpaint(sigma=sigma, noise=noise, latent_image=latent_image, **kwargs)

        def memory_required(self, input_shape, *args, **kwargs):  # 0.33+ also pass cond_shapes
            return self.spec.memory(tuple(input_shape))

    class NativeModelPatcher(_budgeted(mp.ModelPatcher)):
        def load(self, *args, **kwargs):
            _release_sharers(self.model)
            return super().load(*args, **kwargs)

    return NativeModel, NativeModelPatcher


def _release_sharers(model: torch.nn.Module) -> None:
    """The adapter's MODEL and the handle's patcher are two ComfyUI models over the same weights: before one loads,
    the other is unloaded (its LoRA patches restored, its weights back on the offload device), as ComfyUI unloads a
    model to make room."""
    loaded = getattr(_comfy("comfy.model_management"), "current_loaded_models", [])
    weights = _shared_weights(model)
    for i in reversed(range(len(loaded))):
        other = loaded[i].model
        if other is not None and other.model is not model and _shared_weights(other.model) is weights:
            loaded.pop(i).model_unload()


def _shared_weights(model: torch.nn.Module):
    return model.module if isinstance(model, _Holder) else getattr(model, "diffusion_model", None)


# ---------------------------------------------------------------------------------------------- progress, interrupt


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel (POST /interrupt)."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def previews_enabled() -> bool:
    cli = _comfy("comfy.cli_args")
    if cli is None:
        return False
    return cli.args.preview_method != cli.LatentPreviewMethod.NoPreviews


def preview_max_size() -> int:
    cli = _comfy("comfy.cli_args")
    return cli.args.preview_size if cli is not None else 512


class Progress:
    """ComfyUI's ProgressBar (WS `progress` messages, previews, interrupt); a no-op standalone."""

    def __init__(self, total: int):
        utils = _comfy("comfy.utils")
        self._bar = utils.ProgressBar(total) if utils is not None else None
        self.total = total

    def update(self, value: int, preview_image=None) -> None:
        if self._bar is None:
            return
        preview = ("JPEG", preview_image, preview_max_size()) if preview_image is not None else None
        self._bar.update_absolute(value, self.total, preview)


def step_callback(total: int, preview=None):
    """A sampler callback(step, total, x0): progress messages, interrupt check, preview image when enabled."""
    progress = Progress(total)
    with_preview = preview is not None and previews_enabled()

    def callback(step: int, run_total: int, x0: torch.Tensor) -> None:
        check_interrupt()
        progress.total = run_total  # custom sigmas decide the step count, not the steps input
        progress.update(step, preview(x0) if with_preview else None)

    return callback


# ---------------------------------------------------------------------------------------------- model folders


# Extensions our loaders read beyond those ComfyUI lists in a folder. ComfyUI's extension sets are shared by all
# folders and by other nodes (its own UNet / CLIP loaders cannot read GGUF), so they stay as they are and the extra
# files are found here instead.
_EXTRA_EXTENSIONS = dict.fromkeys(("diffusion_models", "unet", "text_encoders", "clip"), {".gguf"})


def model_files(folder: str) -> list[str]:
    """File names in one of ComfyUI's model folders (`diffusion_models`, `text_encoders`, `vae`, ...), GGUF files
    included where our loaders read them."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        return []
    names = folder_paths.get_filename_list(folder)
    extra = _EXTRA_EXTENSIONS.get(folder)
    if extra:
        for root in folder_paths.get_folder_paths(folder):
            files, _ = folder_paths.recursive_search(root, excluded_dir_names=[".git"])
            names += folder_paths.filter_files_extensions(files, extra)
    return sorted(set(names))


# What marks a model folder: a diffusers / HF model or pipeline, or a Wan-AI Wan2.2 A14B release (two expert folders).
_MODEL_DIR_MARKERS = ("config.json", "model_index.json", os.path.join("high_noise_model", "config.json"))


def _is_model_dir(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, marker)) for marker in _MODEL_DIR_MARKERS)


def model_dirs(folder: str) -> list[str]:
    """Sub-folders (diffusers / HF layouts) directly inside one of ComfyUI's model folders, as relative names."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        return []
    names = set()
    for root in folder_paths.get_folder_paths(folder):
        if os.path.isdir(root):
            names.update(n for n in os.listdir(root) if _is_model_dir(os.path.join(root, n)))
    return sorted(names)


def output_location(prefix: str, width: int, height: int) -> tuple[str, str, int, str]:
    """(folder, file name stem, first counter to try, subfolder) for a new output file, as SaveImage numbers its
    files (video.files.write_new_file then takes the first free counter from there).

    Prefixes with control characters or that escape the output folder are refused; standalone files go to ./output.
    """
    check_filename_prefix(prefix)
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        root = os.path.abspath("output")
        subfolder, filename = os.path.split(os.path.normpath(prefix))
        folder = os.path.abspath(os.path.join(root, subfolder))
        if os.path.commonpath((root, folder)) != root:
            raise ValueError(f"filename_prefix '{prefix}' is outside the output folder {root}.")
        os.makedirs(folder, exist_ok=True)
        return folder, filename, 1, subfolder
    try:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            prefix, folder_paths.get_output_directory(), width, height)
    except Exception as e:  # ComfyUI raises a bare Exception for prefixes outside the output folder
        raise ValueError(f"filename_prefix '{prefix}': {e}") from e
    return folder, filename, counter, subfolder


def resolve_model_path(folder: str, name: str) -> str:
    """Absolute path of a file or folder the user picked from a model folder.

    Refuses names that escape the model folders (`../`, absolute paths): an API client can send any string.
    """
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        if not os.path.exists(name):
            raise ValueError(f"'{name}' does not exist.")
        return os.path.abspath(name)
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise ValueError(f"'{name}' is not inside the '{folder}' model folder; pick a file from the list.")
    path = folder_paths.get_full_path(folder, name)
    if path is not None:
        return path
    for root in folder_paths.get_folder_paths(folder):
        candidate = os.path.join(root, name)
        if os.path.isdir(candidate):
            return candidate
    raise ValueError(f"'{name}' was not found in the '{folder}' model folders ({folder_paths.get_folder_paths(folder)}).")
