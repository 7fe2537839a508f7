"""The one module that talks to ComfyUI.

Everything ComfyUI-specific goes through here: model patchers and `load_models_gpu`, the devices and dtypes ComfyUI
chooses, progress bars, interrupts, latent previews and the model folders. When ComfyUI is not importable (unit
tests, scripts) each function falls back to a plain standalone behaviour, so the library runs without it.
"""

from __future__ import annotations

import importlib
import os

import torch


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

    def model_size(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values())

    def clone(self) -> "StandalonePatcher":
        return StandalonePatcher(self.model, self.load_device, self.offload_device)


def make_patcher(holder: torch.nn.Module, role: str):
    """One ModelPatcher over a plain holder module (never the diffusers model itself: its `device` is read-only)."""
    load_device, offload_device = devices(role)
    mp = _comfy("comfy.model_patcher")
    if mp is None:
        return StandalonePatcher(holder, load_device, offload_device)
    return mp.ModelPatcher(holder, load_device=load_device, offload_device=offload_device)


def load_models(patchers: list, memory_required: int = 0) -> None:
    """Put models on their load device through ComfyUI's VRAM manager, which evicts others to make room.

    Diffusers modules are loaded whole (`force_full_load`): their layers are not `comfy.ops` classes, so ComfyUI's
    partial loading would leave some on the offload device.
    """
    mm = _comfy("comfy.model_management")
    if mm is None:
        for patcher in patchers:
            patcher.model.to(patcher.load_device)
        return
    mm.load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)


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


def model_files(folder: str) -> list[str]:
    """File names in one of ComfyUI's model folders (`diffusion_models`, `text_encoders`, `vae`, ...)."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        return []
    return folder_paths.get_filename_list(folder)


def _is_model_dir(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, marker)) for marker in ("config.json", "model_index.json"))


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


def output_file(prefix: str, width: int, height: int, extension: str) -> tuple[str, str, str]:
    """(absolute path, file name, subfolder) for a new output file, numbered as SaveImage numbers its files.

    ComfyUI refuses prefixes that escape its output folder; standalone files go to ./output.
    """
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        root = os.path.abspath("output")
        os.makedirs(root, exist_ok=True)
        index = len(os.listdir(root))
        name = f"{os.path.basename(prefix)}_{index:05}_.{extension}"
        return os.path.join(root, name), name, ""
    try:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            prefix, folder_paths.get_output_directory(), width, height)
    except Exception as e:  # ComfyUI raises a bare Exception for prefixes outside the output folder
        raise ValueError(f"filename_prefix '{prefix}': {e}") from e
    name = f"{filename}_{counter:05}_.{extension}"
    return os.path.join(folder, name), name, subfolder


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
