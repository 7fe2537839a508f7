"""Layers that fetch their tensors on call: the one mechanism behind weight storage dtypes and partial loading.

Two memory features need a layer to compute with tensors it does not hold in the form it computes with:
- weight storage (loaders/storage.py): Linear / Conv weights held in fp8 or bf16 and cast up to the model's compute
  dtype for each call;
- partial loading (ComfyUI's --lowvram / --novram, short VRAM, a weight budget): layers that do not fit stay on the
  offload device and are copied to the compute device for each call.
Both are the same operation - cast the module's own tensors to the call's device and compute dtype, run the module's
own forward with the copies, drop them - so one mechanism serves both, standalone and inside ComfyUI: every module
that owns tensors becomes a `CastOnCall` subclass of its own class (same name, isinstance, state-dict keys and
forward unchanged). It speaks ComfyUI's protocol for cast-capable layers (`comfy_cast_weights`, `weight_function`,
`bias_function`, and `convert_weight` / `set_weight` for scaled fp8), so ComfyUI's ModelPatcher loads these models
partially and patches their weights (LoRA) as it does its own `comfy.ops` layers.

Why not `comfy.ops` classes: they exist for torch's own layers, with forwards of their own, while these models use
their own norms (FP32LayerNorm, RMSNorm, Gemma2RMSNorm, ...) and keep tensors on modules that have children
(scale_shift_table, RoPE tables), which ComfyUI's partial loading never moves; comfy.ops is also missing standalone.
Why not diffusers' layerwise casting hooks: they convert the stored weights in place to the compute dtype before
each call and back after - for a layer left on the offload device that is a full conversion there plus a copy to the
GPU, the patcher's LoRA backups would see tensors change under them, and there is no per-layer scale for ComfyUI's
scaled fp8 files. A cast on call changes dtype and device in one copy and leaves the stored tensors alone.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable

import torch
from torch import nn

# ComfyUI's name for the per-layer weight scale of its scaled fp8 files (weight = stored * scale_weight).
SCALE = "scale_weight"

# (tensor, dtype, copy) items -> the tensors on `device`; the bridge passes ComfyUI's own copy (offload streams).
Caster = Callable[[list[tuple[torch.Tensor, torch.dtype, bool]], torch.device], list[torch.Tensor]]


def plain_cast(items: list[tuple[torch.Tensor, torch.dtype, bool]], device: torch.device) -> list[torch.Tensor]:
    return [tensor.to(device=device, dtype=dtype, copy=copy) for tensor, dtype, copy in items]


# (module, device) -> ({"weight": ..., "bias": ...} for this call, release) or None: the bridge's fetch of a layer's
# weight and bias through a memory manager that holds them itself (ComfyUI's dynamic VRAM); None where it does not.
Fetch = Callable[[nn.Module, torch.device], "tuple[dict[str, torch.Tensor | None], Callable[[], None]] | None"]


class CastOnCall:
    """Mixin: on each call, the module's own tensors that are not usable as they are get cast for that call.

    A tensor is cast when it is not on the device of the call's first tensor argument, when the layer stores its
    weights in another dtype than it computes in (`upcast_dtype`), or when ComfyUI attached weight functions (its
    low-VRAM LoRA patches, applied to the cast weight). Buffers move with the parameters in their own dtype.
    """

    weight_function: list = []
    bias_function: list = []
    # The dtype the weights are computed in, on layers whose weights are stored in another (loaders/storage.py).
    upcast_dtype: torch.dtype | None = None
    tensor_caster: Caster = staticmethod(plain_cast)
    managed_fetch: Fetch | None = None

    def resident(self, device: torch.device) -> bool:
        """Whether every tensor is usable as it is on `device` (the full-load case, checked first: it is the common
        one and runs on every call)."""
        if self.upcast_dtype is not None or self.weight_function or self.bias_function:
            return False
        for tensor in self._parameters.values():
            if tensor is not None and tensor.device != device:
                return False
        for tensor in self._buffers.values():
            if tensor is not None and tensor.device != device:
                return False
        return True

    def call_tensors(self, device: torch.device) -> tuple[dict[str, torch.Tensor], Callable[[], None] | None]:
        """(name -> tensor to run this call with, what to call once the call is done); no names when every tensor is
        usable as it is."""
        managed = self.managed_fetch(self, device) if self.managed_fetch is not None else None
        fetched, release = managed if managed is not None else ({}, None)
        functions = {"weight": self.weight_function, "bias": self.bias_function}
        scale = self._buffers.get(SCALE)
        names, items = [], []
        for name, tensor in itertools.chain(self._parameters.items(), self._buffers.items()):
            if tensor is None or name == SCALE or name in fetched:
                continue
            dtype = tensor.dtype
            if self.upcast_dtype is not None and tensor.is_floating_point() and name in self._parameters:
                dtype = self.upcast_dtype
            patched = bool(functions.get(name)) or (scale is not None and name == "weight")
            if tensor.device != device or dtype != tensor.dtype or patched:
                names.append(name)
                items.append((tensor, dtype, bool(functions.get(name))))
        tensors = dict(zip(names, self.tensor_caster(items, device))) if items else {}
        for name, tensor in tensors.items():
            tensors[name] = self.finish(name, tensor, functions.get(name) or ())
        return {**fetched, **tensors}, release

    def finish(self, name: str, tensor: torch.Tensor, functions) -> torch.Tensor:
        """A tensor cast for the call, made ready: the patch functions ComfyUI attached applied in order."""
        for function in functions:
            tensor = function(tensor)
        return tensor


class ComfyCastable(CastOnCall):
    """A cast-on-call layer shaped like ComfyUI's own `comfy.ops` layers - a `weight` tensor and a `bias` tensor or
    none - which ComfyUI's ModelPatcher may therefore leave offloaded, stage in its dynamic VRAM and patch (LoRA):
    its loaders read `<layer>.weight` and `<layer>.bias` of every layer that has `comfy_cast_weights`
    (comfy/model_patcher.py `get_key_weight`). Other tensor-owning modules (norms with a `gamma`, modulation tables,
    RoPE buffers) still cast on call, but ComfyUI loads them as plain modules.
    """

    # ComfyUI takes layers that have this attribute as castable, and sets it on those it leaves offloaded; the cast
    # itself is decided per call from where the tensors are.
    comfy_cast_weights = False

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "bias":  # no bias reads as a None bias, as on torch's own layers
                return None
            raise


class ScaledCastOnCall(ComfyCastable):
    """A layer of a ComfyUI scaled fp8 file kept in fp8: its weight is `stored * scale_weight`.

    `convert_weight` / `set_weight` are ComfyUI's hooks (comfy/ops.py `scaled_fp8_ops`) through which its patcher
    applies LoRA patches to the scaled weight and stores the result back in the scaled form.
    """

    def finish(self, name: str, tensor: torch.Tensor, functions) -> torch.Tensor:
        """The real weight for the call: stored weight (cast) times its scale; LoRA patches (ComfyUI's
        `LowVramPatch`, which has `set_func`) are applied to that and the result rounded back to the stored form as
        the patcher's full load does (`patch_weight_to_device`: convert_weight, patch, set_weight). The patch's own
        convert/set hooks are left out: 0.3.x applies them inside the patch, 0.33+ ignores them, and this layer does
        both steps itself so both versions give the full load's weight. Other weight functions apply last."""
        if name != "weight":
            return super().finish(name, tensor, functions)
        scale = self._buffers[SCALE].to(device=tensor.device, dtype=tensor.dtype)
        weight = tensor * scale
        patches = [function for function in functions if hasattr(function, "set_func")]
        if patches:
            for patch in patches:
                patch = copy.copy(patch)
                patch.convert_func = patch.set_func = None
                weight = patch(weight)
            weight = self.set_weight(weight, return_weight=True).to(tensor.dtype) * scale
        return super().finish(name, weight, [function for function in functions if function not in patches])

    def convert_weight(self, weight: torch.Tensor, inplace: bool = False, **kwargs) -> torch.Tensor:
        scale = self._buffers[SCALE].to(device=weight.device, dtype=weight.dtype)
        return weight.mul_(scale) if inplace else weight * scale

    def set_weight(self, weight: torch.Tensor, inplace_update: bool = False, seed=None, return_weight: bool = False,
                   **kwargs):
        stored = to_storage(weight / self._buffers[SCALE].to(device=weight.device, dtype=weight.dtype),
                            self.weight.dtype)
        if return_weight:
            return stored
        if inplace_update:
            self.weight.data.copy_(stored)
        else:
            self.weight = nn.Parameter(stored, requires_grad=False)


def to_storage(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` in `dtype`; values beyond an fp8 format's range are clamped to it (a plain cast overflows e5m2 to
    inf)."""
    if tensor.dtype == dtype:
        return tensor
    if dtype.itemsize == 1 and dtype.is_floating_point:
        limit = torch.finfo(dtype).max
        return tensor.to(torch.float32).clamp_(-limit, limit).to(dtype)
    return tensor.to(dtype)


def _call_device(args: tuple, kwargs: dict) -> torch.device | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0].device
    for value in itertools.chain(args, kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


@functools.cache
def _cast_class(cls: type, mixin: type) -> type:
    """`cls` with the cast on call in front of its own forward; keeps its name (diffusers finds blocks by name)."""
    original = cls.forward

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        device = _call_device(args, kwargs)
        if device is None or self.resident(device):
            return original(self, *args, **kwargs)
        tensors, release = self.call_tensors(device)
        held = {name: self._parameters if name in self._parameters else self._buffers for name in tensors}
        saved = {name: store[name] for name, store in held.items()}
        try:
            for name, store in held.items():
                store[name] = tensors[name]
            return original(self, *args, **kwargs)
        finally:
            for name, store in held.items():
                store[name] = saved[name]
            if release is not None:
                release()

    return type(cls.__name__, (mixin, cls), {"forward": forward, "__qualname__": cls.__qualname__})


def _mixin(module: nn.Module) -> type:
    """The cast-on-call class for a module: scaled fp8, shaped like ComfyUI's layers, or any other."""
    if SCALE in module._buffers:
        return ScaledCastOnCall
    own = {name for name, t in itertools.chain(module._parameters.items(), module._buffers.items()) if t is not None}
    bias = getattr(module, "bias", None)
    if "weight" in own and "weight" in module._parameters and own <= {"weight", "bias"} and (
            bias is None or isinstance(bias, torch.Tensor)):
        return ComfyCastable
    return CastOnCall


def owns_tensors(module: nn.Module) -> bool:
    return any(t is not None for t in itertools.chain(module._parameters.values(), module._buffers.values()))


def install(model: nn.Module, caster: Caster | None = None, fetch: Fetch | None = None) -> nn.Module:
    """Make every module of `model` that owns tensors cast on call (idempotent); returns `model`.

    `caster` replaces the plain `.to()` copy (the bridge passes ComfyUI's), `fetch` gets weights a memory manager
    holds (the bridge passes ComfyUI's dynamic VRAM fetch). A module that already casts keeps its
    class, so layers prepared by a loader (stored dtypes, scales) only get the caster.
    """
    for module in model.modules():
        if not isinstance(module, CastOnCall):
            if not owns_tensors(module):
                continue
            module.__class__ = _cast_class(type(module), _mixin(module))
        if caster is not None:
            module.tensor_caster = caster
        if fetch is not None:
            module.managed_fetch = fetch
    return model


def direct_bytes(module: nn.Module) -> int:
    """Bytes of the tensors the module owns itself (not its children's)."""
    tensors = itertools.chain(module._parameters.values(), module._buffers.values())
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def place_within(model: nn.Module, budget: int, load_device: torch.device, offload_device: torch.device) -> int:
    """Standalone partial loading: the modules owning the most bytes on `load_device` while `budget` bytes allow,
    the others on `offload_device` (ComfyUI's order: largest first). Returns the bytes placed on `load_device`.

    Needs `install`ed layers: those left offloaded are cast to the load device on each call.
    """
    used = 0
    owners = sorted((m for m in model.modules() if owns_tensors(m)), key=direct_bytes, reverse=True)
    for module in owners:
        size = direct_bytes(module)
        fits = used + size <= budget
        used += size if fits else 0
        device = load_device if fits else offload_device
        module._apply(lambda t: t.to(device), recurse=False)  # what `.to()` does, for this module's own tensors
    return used


def set_execution_device(model: nn.Module, device: torch.device) -> None:
    """Record where `model` computes: the bridge's load device, whichever device each weight sits on."""
    model._execution_device = torch.device(device)


def execution_device(model: nn.Module) -> torch.device:
    """Where a model's inputs go. With partial loading some weights stay on the offload device (cast on call), so the
    first parameter's device (`model.device`) does not say it; the bridge records the load device when it loads."""
    device = model.__dict__.get("_execution_device")
    if device is not None:
        return device
    return next(itertools.chain(model.parameters(), model.buffers())).device
