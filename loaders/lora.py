"""LoRA files for Sana and Wan -> the tensors and layer map ComfyUI's LoRA patching reads.

A LoRA names the layers it changes in one of several layouts: diffusers / PEFT (`transformer.blocks.0.attn1.to_q.
lora_A.weight`), the original model's names with or without ComfyUI's or DiffSynth's prefix (`diffusion_model.blocks.
0.self_attn.q.lora_down.weight`), or kohya's underscored names (`lora_unet_blocks_0_self_attn_q.lora_down.weight`) of
either layout. Each layer is resolved to the parameters of the loaded diffusers model through the checkpoint loaders'
own original -> diffusers key conversion, which also splits Sana's fused qkv / kv layers as it splits the
checkpoints. The result keeps the LoRA's tensors under the model's layer names, with the tensor endings ComfyUI's
`comfy.lora.load_lora` reads, so the weight math (LoRA with alpha, LoHa, LoKr, DoRA, diff / diff_b) stays ComfyUI's.
Shapes are checked here first: ComfyUI only logs a layer that does not fit and goes on.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from .checkpoint import SAFETENSORS_EXT, load_state_dict, safetensors_metadata
from .sana_transformer import convert_original_to_diffusers as sana_to_diffusers
from .wan_transformer import convert_original_to_diffusers as wan_to_diffusers

# Tensor endings found in LoRA files -> the ending ComfyUI's load_lora reads for the same tensor.
_UP = (".lora_up.weight", ".lora_B.weight", ".lora_B.default.weight", "_lora.up.weight", ".lora.up.weight",
       ".lora_linear_layer.up.weight", ".lora_B")
_DOWN = (".lora_down.weight", ".lora_A.weight", ".lora_A.default.weight", "_lora.down.weight", ".lora.down.weight",
         ".lora_linear_layer.down.weight", ".lora_A")
_LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
_LOKR = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
_ENDINGS = {
    **{ending: "lora_up.weight" for ending in _UP}, **{ending: "lora_down.weight" for ending in _DOWN},
    ".lora_mid.weight": "lora_mid.weight", ".alpha": "alpha", ".dora_scale": "dora_scale",
    ".diff": "diff", ".diff_b": "diff_b", ".w_norm": "diff", ".b_norm": "diff_b",
    # PEFT's `lora_bias` (diffusers' reading of diff_b): a bias added with the LoRA's scale.
    ".lora_B.bias": "diff_b",
    **{"." + ending: ending for ending in _LOHA + _LOKR},
}
_BY_LENGTH = sorted(_ENDINGS, key=len, reverse=True)

# What kind of weight change each ending belongs to; alpha, dora_scale and diff_b go with any kind.
_KINDS = {"lora_up.weight": "LoRA", "lora_down.weight": "LoRA", "lora_mid.weight": "LoRA", "diff": "diff",
          **{ending: "LoHa" for ending in _LOHA}, **{ending: "LoKr" for ending in _LOKR}}
# Tensors each kind needs, as alternatives: a LoKr factor is stored whole or as two low-rank halves.
_REQUIRED = {
    "LoRA": [[("lora_up.weight",)], [("lora_down.weight",)]],
    "LoHa": [[("hada_w1_a",)], [("hada_w1_b",)], [("hada_w2_a",)], [("hada_w2_b",)]],
    "LoKr": [[("lokr_w1",), ("lokr_w1_a", "lokr_w1_b")], [("lokr_w2",), ("lokr_w2_a", "lokr_w2_b")]],
    "diff": [[("diff",)]],
}
# How a fused original layer's tensors are split onto its parts: along the output (the parameter named) or shared.
_SPLIT = {"lora_up.weight": "weight", "diff": "weight", "diff_b": "bias"}
_SHARED = {"lora_down.weight", "lora_mid.weight", "alpha"}

_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "pipe.dit.")
_KOHYA_PREFIXES = ("lora_unet_", "lora_transformer_", "lycoris_")
_MAX_UNDERSCORE_READINGS = 12  # 2**12 spellings of one kohya name at most

# A meta tensor whose first dimension splits in 2 and 3, to learn which parameters a layer name becomes.
_PROBE = torch.empty((6, 1), device="meta")


@dataclass(frozen=True)
class _Family:
    name: str
    signature: re.Pattern  # layer names (prefix stripped) that only this family's LoRAs have


_FAMILIES = {
    "sana": _Family("Sana", re.compile(
        r"^(transformer_blocks[._]\d+[._](attn[12]|ff)[._]"
        r"|blocks[._]\d+[._](attn[._](qkv|proj)|cross_attn[._](q_linear|kv_linear|proj)|mlp[._]))")),
    "wan": _Family("Wan", re.compile(
        r"^blocks[._]\d+[._]((self_attn|cross_attn)[._]([qkvo]|k_img|v_img)$|attn[12][._]|ffn[._])")),
}


@dataclass
class FittedLora:
    """A LoRA fitted to one model: what `comfy_bridge.with_weight_patches` takes, and what was left out."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # "<model layer>.<ending ComfyUI reads>"
    layers: dict[str, str] = field(default_factory=dict)  # model layer -> the parameter its patch changes
    unmatched: list[str] = field(default_factory=list)  # keys of the file that fit no layer of the model
    not_patchable: list[str] = field(default_factory=list)  # keys changing parameters ComfyUI does not patch
    kinds: set[str] = field(default_factory=set)


@dataclass
class _Layer:
    name: str  # as in the file, without the tensor ending
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # ComfyUI's ending -> tensor
    keys: dict[str, str] = field(default_factory=dict)  # ComfyUI's ending -> the key in the file

    @property
    def kind(self) -> str | None:
        kinds = {_KINDS[e] for e in self.tensors if e in _KINDS}
        return kinds.pop() if len(kinds) == 1 else None


@dataclass(frozen=True)
class _Target:
    source: str  # the parameter name the layer resolved through (original or diffusers layout)
    parameters: tuple[str, ...]  # model parameters it changes: one, or the parts of a fused original layer


def read_lora(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and safetensors metadata (diffusers keeps the LoRA's alpha there) of a LoRA file."""
    metadata = safetensors_metadata(path) if path.lower().endswith(SAFETENSORS_EXT) else {}
    return load_state_dict(path), metadata


def fit_lora(state_dict: dict[str, torch.Tensor], metadata: dict[str, str], model: torch.nn.Module, family: str,
             lora_name: str) -> FittedLora:
    """Map every layer of a LoRA onto `model` (a diffusers Sana or Wan transformer), checking kinds and shapes.

    Raises ValueError for a LoRA of the other family or none at all, an incomplete or inconsistent layer, and a layer
    whose shapes do not fit the model (naming its first key).
    """
    layers, unmatched = _group_layers(state_dict)
    _add_metadata_alphas(layers, metadata)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    quantized = {name for name, p in model.named_parameters() if not p.is_floating_point()}
    resolve = _Resolver(_converter(family, model), set(shapes))
    patchable = patched_by_comfyui(model)
    fitted = FittedLora(unmatched=unmatched)
    for layer in sorted(layers.values(), key=lambda layer: min(layer.keys.values())):
        kind = _check_complete(layer, lora_name)
        target = resolve(layer.name) if kind or "diff_b" in layer.tensors else None
        if target is None:
            fitted.unmatched += layer.keys.values()
            continue
        if not all(p in patchable for p in target.parameters):
            fitted.not_patchable += layer.keys.values()
            continue
        if quantized & set(target.parameters):
            raise ValueError(f"LoRA '{lora_name}' cannot change '{target.parameters[0]}': this model holds it quantized "
                             f"(GGUF). Load the model from a .safetensors file to use LoRAs on it.")
        parts = _split(layer, target, resolve.convert, lora_name)
        for parameter, part in zip(target.parameters, parts):
            _check_shapes(part, layer, parameter, shapes, lora_name, _FAMILIES[family].name)
            model_layer = parameter.removesuffix(".weight")
            if model_layer in fitted.layers:
                raise ValueError(f"LoRA '{lora_name}' changes '{parameter}' twice ('{layer.name}' and another layer "
                                 f"of the file); it mixes two layouts. Use a file with one entry per layer.")
            fitted.layers[model_layer] = parameter
            fitted.tensors.update({f"{model_layer}.{ending}": tensor for ending, tensor in part.items()})
        fitted.kinds.add(kind or "diff")
    if not fitted.layers and not fitted.not_patchable:
        raise _no_layer_fits(list(layers), family, lora_name)
    fitted.unmatched.sort()
    fitted.not_patchable.sort()
    return fitted


def patched_by_comfyui(model: torch.nn.Module) -> set[str]:
    """The parameters ComfyUI's ModelPatcher patches when it loads a model: those of modules holding no parameters
    in sub-modules. Its `_load_list` skips the others, so a patch on e.g. a block's scale_shift_table would be
    dropped without a word; such LoRA keys are reported instead."""
    names = set()
    for module_name, module in model.named_modules():
        own = [name for name, _ in module.named_parameters(recurse=False)]
        if own and len(own) == len(list(module.parameters())):
            names.update(f"{module_name}.{name}" if module_name else name for name in own)
    return names


def _group_layers(state_dict: dict) -> tuple[dict[str, _Layer], list[str]]:
    layers: dict[str, _Layer] = {}
    unknown = []
    for key, tensor in state_dict.items():
        ending = next((e for e in _BY_LENGTH if key.endswith(e)), None)
        if ending is None:
            unknown.append(key)
            continue
        layer = layers.setdefault(key[: -len(ending)], _Layer(key[: -len(ending)]))
        layer.tensors[_ENDINGS[ending]] = tensor
        layer.keys[_ENDINGS[ending]] = key
    return layers, unknown


def _add_metadata_alphas(layers: dict[str, _Layer], metadata: dict[str, str]) -> None:
    """Alphas of PEFT files saved by diffusers, which keeps them in the `lora_adapter_metadata` header entry
    (ComfyUI reads only `.alpha` tensors); a PEFT bias (`lora_B.bias`) is scaled with its LoRA as PEFT does."""
    config = _peft_config(metadata)
    for layer in layers.values():
        if config is None or layer.kind != "LoRA" or "alpha" in layer.tensors:
            continue
        name = layer.name.removeprefix("transformer.")
        alpha = next((v for k, v in config.get("alpha_pattern", {}).items() if re.fullmatch(rf"(.*\.)?{k}", name)),
                     config.get("lora_alpha"))
        if alpha is None:
            continue
        rank = layer.tensors["lora_down.weight"].shape[0]
        alpha = alpha * math.sqrt(rank) if config.get("use_rslora") else alpha  # rsLoRA scales by alpha / sqrt(r)
        layer.tensors["alpha"] = torch.tensor(float(alpha))
        if layer.keys.get("diff_b", "").endswith(".lora_B.bias"):
            layer.tensors["diff_b"] = layer.tensors["diff_b"] * (alpha / rank)


def _peft_config(metadata: dict[str, str]) -> dict | None:
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"The LoRA's lora_adapter_metadata header entry is not valid JSON ({e}).") from e
    return {key.removeprefix("transformer."): value for key, value in config.items()}


def _check_complete(layer: _Layer, lora_name: str) -> str | None:
    """The layer's kind (None for a bias-only or alpha-only entry); ValueError for mixed kinds or missing tensors."""
    kinds = sorted({_KINDS[e] for e in layer.tensors if e in _KINDS})
    if len(kinds) > 1:
        raise ValueError(f"LoRA '{lora_name}': layer '{layer.name}' holds both {kinds[0]} and {kinds[1]} tensors; "
                         f"the file is broken or mixes two LoRAs.")
    if not kinds:
        return None
    for alternatives in _REQUIRED[kinds[0]]:
        if not any(all(e in layer.tensors for e in option) for option in alternatives):
            missing = " or ".join("+".join(option) for option in alternatives)
            raise ValueError(f"LoRA '{lora_name}' is incomplete: layer '{layer.name}' has "
                             f"{sorted(layer.keys.values())} but no {missing}.")
    return kinds[0]


def _converter(family: str, model: torch.nn.Module) -> Callable[[dict], dict]:
    if family == "sana":
        # A Sprint model's timestep embedder has other diffusers names; single layers cannot tell it.
        return partial(sana_to_diffusers, sprint=bool(model.config.guidance_embeds))
    if family == "wan":
        return wan_to_diffusers
    raise ValueError(f"Unknown model family '{family}'.")


class _Resolver:
    """LoRA layer name, in any layout the module docstring lists -> the model parameters it changes."""

    def __init__(self, convert: Callable[[dict], dict], parameters: set[str]):
        self.convert = convert
        self._parameters = parameters
        # kohya names of the diffusers layout: every '.' of the parameter's layer became '_'.
        self._underscored = {p.removesuffix(".weight").replace(".", "_"): p.removesuffix(".weight")
                             for p in parameters if not p.endswith(".bias")}
        self._cache: dict[str, _Target | None] = {}

    def __call__(self, layer: str) -> _Target | None:
        if layer not in self._cache:
            self._cache[layer] = self._resolve(layer)
        return self._cache[layer]

    def _resolve(self, layer: str) -> _Target | None:
        name, underscored = _strip_prefix(layer)
        if not underscored:
            return self._target(name)
        if name in self._underscored:
            return self._target(self._underscored[name])
        return next(filter(None, map(self._target, _dotted_readings(name))), None)

    def _target(self, name: str) -> _Target | None:
        for key in (f"{name}.weight", name):
            if key in self._parameters:
                return _Target(key, (key,))
            try:
                converted = tuple(self.convert({key: _PROBE}))
            except (KeyError, IndexError, RuntimeError, ValueError):  # diffusers' converter on a name it never saw
                continue
            if converted and all(k in self._parameters for k in converted):
                return _Target(key, converted)
        return None


def _strip_prefix(layer: str) -> tuple[str, bool]:
    """The layer name without the trainer's prefix, and whether it is a kohya name ('.' written as '_')."""
    for prefix in _KOHYA_PREFIXES:
        if layer.startswith(prefix):
            return layer[len(prefix):].lstrip("_"), True  # Wan Fun LoRAs write 'lora_unet__blocks_0_...'
    for prefix in _PREFIXES:
        layer = layer.removeprefix(prefix)
    return layer, "." not in layer


def _dotted_readings(name: str):
    """Every way to read a kohya name's '_' back as '.' or '_' (original names keep '_' inside parts: self_attn,
    k_img); numbers are always parts of their own (blocks_0_ -> blocks.0.)."""
    parts = name.split("_")
    free = [i for i in range(len(parts) - 1) if not (parts[i].isdigit() or parts[i + 1].isdigit())]
    if len(free) > _MAX_UNDERSCORE_READINGS:
        return
    for choice in itertools.product("._", repeat=len(free)):
        separators = ["."] * (len(parts) - 1)
        for index, separator in zip(free, choice):
            separators[index] = separator
        yield parts[0] + "".join(s + p for s, p in zip(separators, parts[1:]))


def _split(layer: _Layer, target: _Target, convert, lora_name: str) -> list[dict[str, torch.Tensor]]:
    """The layer's tensors for each parameter it changes: a fused original layer's output-side tensors are split
    by the checkpoint conversion itself, the input side is shared by the parts."""
    count = len(target.parameters)
    if count == 1:
        return [dict(layer.tensors)]
    odd = sorted(set(layer.tensors) - _SPLIT.keys() - _SHARED)
    if odd:
        raise ValueError(f"LoRA '{lora_name}': '{layer.keys[odd[0]]}' changes the fused layer '{target.source}', which "
                         f"this model holds as {count} layers; only LoRA (up/down) and diff layers can be split.")
    parts: list[dict] = [{} for _ in range(count)]
    for ending, tensor in layer.tensors.items():
        if ending in _SPLIT:
            key = target.source.removesuffix("weight") + _SPLIT[ending]
            pieces = list(convert({key: tensor}).values())
            if len(pieces) != count:
                raise ValueError(f"LoRA '{lora_name}' does not fit this model: '{layer.keys[ending]}' "
                                 f"{tuple(tensor.shape)} cannot be split onto the {count} parts of '{target.source}'.")
        else:
            pieces = [tensor] * count
        for part, piece in zip(parts, pieces):
            part[ending] = piece
    return parts


def _check_shapes(part: dict, layer: _Layer, parameter: str, shapes: dict, lora_name: str, family: str) -> None:
    weight = shapes[parameter]
    made = _change_shape(part, layer, lora_name)
    if made is not None and (made[0] != weight[0] or math.prod(made[1:]) != math.prod(weight[1:])):
        raise _misfit(layer, parameter, weight, made, lora_name, family)
    if "diff" in part and tuple(part["diff"].shape) != weight:
        raise _misfit(layer, parameter, weight, tuple(part["diff"].shape), lora_name, family)
    if "diff_b" in part:
        bias = parameter.removesuffix("weight") + "bias"
        if bias not in shapes:
            raise ValueError(f"LoRA '{lora_name}': '{layer.keys['diff_b']}' changes a bias, but '{parameter}' of this "
                             f"{family} model has none. The LoRA is for another model.")
        if tuple(part["diff_b"].shape) != shapes[bias]:
            raise _misfit(layer, bias, shapes[bias], tuple(part["diff_b"].shape), lora_name, family)


def _change_shape(part: dict, layer: _Layer, lora_name: str) -> tuple[int, ...] | None:
    """(output, input...) of the weight change a LoRA / LoHa / LoKr layer makes; ValueError when its ranks disagree."""
    def rank_check(a: str, dim_a: int, b: str, dim_b: int) -> None:
        if part[a].shape[dim_a] != part[b].shape[dim_b]:
            raise ValueError(f"LoRA '{lora_name}' is broken: '{layer.keys[a]}' {tuple(part[a].shape)} and "
                             f"'{layer.keys[b]}' {tuple(part[b].shape)} have different ranks.")

    if "lora_up.weight" in part:
        up, down, mid = part["lora_up.weight"], part["lora_down.weight"], part.get("lora_mid.weight")
        rank_check("lora_up.weight", 1, "lora_down.weight", 0)
        kernel = tuple(mid.shape[2:]) if mid is not None else ()
        return (up.shape[0], *down.shape[1:], *kernel)
    if "hada_w1_a" in part:
        rank_check("hada_w1_a", 1 if "hada_t1" not in part else 0, "hada_w1_b", 0)
        if "hada_t1" in part:  # Tucker form: einsum('ijkl,jr,ip->prkl', t1, w1_b, w1_a)
            return (part["hada_w1_a"].shape[1], part["hada_w1_b"].shape[1], *part["hada_t1"].shape[2:])
        return (part["hada_w1_a"].shape[0], *part["hada_w1_b"].shape[1:])
    if "lokr_w1" in part or "lokr_w1_a" in part:
        if "lokr_w1" in part:
            w1 = tuple(part["lokr_w1"].shape)
        else:
            rank_check("lokr_w1_a", 1, "lokr_w1_b", 0)
            w1 = (part["lokr_w1_a"].shape[0], part["lokr_w1_b"].shape[1])
        if "lokr_w2" in part:
            w2 = tuple(part["lokr_w2"].shape)
        elif "lokr_t2" in part:  # Tucker form: einsum('ijkl,jr,ip->prkl', t2, w2_b, w2_a)
            w2 = (part["lokr_w2_a"].shape[1], part["lokr_w2_b"].shape[1], *part["lokr_t2"].shape[2:])
        else:
            rank_check("lokr_w2_a", 1, "lokr_w2_b", 0)
            w2 = (part["lokr_w2_a"].shape[0], *part["lokr_w2_b"].shape[1:])
        return (w1[0] * w2[0], w1[1] * math.prod(w2[1:]))  # the Kronecker product's shape
    return None


def _misfit(layer: _Layer, parameter: str, weight: tuple, made: tuple, lora_name: str, family: str) -> ValueError:
    return ValueError(
        f"LoRA '{lora_name}' does not fit this {family} model: '{min(layer.keys.values())}' changes '{parameter}' "
        f"{weight} with a change of shape {made}. The LoRA was made for another size or variant of the model."
    )


def _no_layer_fits(layers: list[str], family: str, lora_name: str) -> ValueError:
    if not layers:
        return ValueError(f"'{lora_name}' holds no LoRA layers (no lora_up/lora_down, lora_A/lora_B, LoHa, LoKr or "
                          f"diff tensors).")
    names = [_strip_prefix(layer)[0] for layer in layers]
    this = _FAMILIES[family].name
    for other in _FAMILIES.values():
        if other.name != this and any(other.signature.search(name) for name in names):
            return ValueError(f"'{lora_name}' is a {other.name} LoRA; this loader applies LoRAs to {this} models. Use "
                              f"it with the {other.name} LoRA Loader on a {other.name} model.")
    return ValueError(f"No layer of LoRA '{lora_name}' is in this {this} model (the first: '{sorted(layers)[0]}'); it "
                      f"is a LoRA for another model.")
