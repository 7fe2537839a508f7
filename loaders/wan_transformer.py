"""Wan2.1 and Wan2.2 transformer files (Wan-AI / Comfy-Org originals, plain and ComfyUI scaled fp8, diffusers) ->
`WanTransformer3DModel`.

The architecture is read from the tensors themselves, never from the file name: users rename files, and one loader
node must take the 1.3B and 14B text-to-video and the 14B image-to-video models, Wan2.2's A14B experts and TI2V-5B
in every layout (and the VACE and Fun-Camera add-ons: a Fun-Camera file gets the camera adapter of
controlnet/wan_camera.py). A Wan2.2 A14B text-to-video expert has the Wan2.1 14B T2V shape (the two are told apart
only where a folder says so); its image-to-video experts take 36 input channels without a CLIP image embedder;
TI2V-5B works on the Wan2.2 VAE's 48-channel latents. Folders holding both A14B experts (a diffusers pipeline's
`transformer/` and `transformer_2/`, Wan-AI's `high_noise_model/` and `low_noise_model/`) give the one `expert` names.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from functools import partial
from math import prod

import torch
from diffusers import WanTransformer3DModel, WanVACETransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from ..controlnet.wan_camera import attach_camera_adapter
from .checkpoint import (
    checkpoint_keys, load_folder_state_dict, load_state_dict, read_json, strip_prefix, weight_files_in_folder,
)
from .detect import require_transformer
from .gguf import to_compute_dtype
from .meta_build import COMPUTE_DTYPES, build_on_meta, check_converted_layout, main_dtype
from .storage import storage_preparer

DIFFUSERS_STEM = "diffusion_pytorch_model"
_FILE_PREFIXES = ("model.diffusion_model.",)

# Wan's heads are always 128 channels wide; ComfyUI infers num_heads = dim // 128 the same way.
_HEAD_DIM = 128
# Wan2.1 latents have 16 channels; the image-to-video models add 4 mask and 16 image-latent channels.
_LATENT_CHANNELS = 16
_I2V_IN_CHANNELS = 36
_CAMERA_IN_CHANNELS = 32  # Wan2.1 Fun-Camera: the start image's latent, no mask channels (ComfyUI's WAN21_Camera)
_WAN22_LATENT_CHANNELS = 48

# ComfyUI's scaled fp8: a `scaled_fp8` marker tensor, Linear layers held in fp8 (biases too, unscaled) and a float32
# `<layer>.scale_weight` each (`<layer>.scale_input` only serves fp8 matmuls of the activations, so it is dropped).
_SCALED_FP8_MARKER = "scaled_fp8"
_SCALE_WEIGHT = ".scale_weight"
_SCALE_SUFFIXES = (_SCALE_WEIGHT, ".scale_input")
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_FP8_COMPUTE_DTYPE = torch.bfloat16

# diffusers' `convert_wan_transformer_to_diffusers` maps every Wan2.1 T2V / I2V key but not the image position
# embedding of the first-last-frame (FLF2V) model, which it leaves under its original name.
_CONVERTER_GAPS = {"img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed"}

# Add-ons that ComfyUI's own detection knows and that no diffusers Wan2.1 class here holds: key prefix -> what it is.
# (VACE, `vace_*` keys, loads as `WanVACETransformer3DModel`; Fun-Camera, `control_adapter.*`, as a
# `WanTransformer3DModel` with the camera adapter of controlnet/wan_camera.py.)
_EXTENSIONS = {
    "casual_audio_encoder.": "Wan2.2 S2V", "audio_proj.": "Wan HuMo", "face_adapter.": "Wan2.2 Animate",
    "ref_conv.": "Wan Fun reference-image",
}
# Not a diffusers config field: the camera adapter's input channels (24 Plücker channels for every Fun-Camera file).
CAMERA_CONFIG = "camera_adapter_channels"
_UNSHUFFLED = 64  # the adapter folds 8x8 pixels into channels before its first convolution

# role -> diffusers-layout key pattern, matched in full (original files are renamed first).
_ROLES = {
    "patch": r"patch_embedding\.weight",
    "out": r"proj_out\.weight",
    "text": r"condition_embedder\.text_embedder\.linear_1\.weight",
    "time": r"condition_embedder\.time_embedder\.linear_1\.weight",
    "ffn": r"blocks\.\d+\.ffn\.net\.0\.proj\.weight",
    "qk_norm": r"blocks\.\d+\.attn1\.norm_q\.weight",
    "cross_attn_norm": r"blocks\.\d+\.norm2\.weight",
    "image": r"condition_embedder\.image_embedder\.norm1\.weight",
    "image_pos": r"condition_embedder\.image_embedder\.pos_embed",
    "added_kv": r"blocks\.\d+\.attn2\.add_k_proj\.weight",
    "block": r"blocks\.(\d+)\..+",
    "vace_patch": r"vace_patch_embedding\.weight",
    "vace_block": r"vace_blocks\.(\d+)\..+",
    "camera": r"control_adapter\.conv\.weight",
}

_SIZES = {(1536, 30): "1.3B", (5120, 40): "14B", (3072, 30): "5B"}
_LOW_RES_AREA = 832 * 480

# The folders of the two Wan2.2 A14B experts: expert -> (diffusers pipeline, Wan-AI release).
EXPERTS = {"high_noise": ("transformer", "high_noise_model"), "low_noise": ("transformer_2", "low_noise_model")}


@dataclass(frozen=True)
class ExpertDefaults:
    """How Wan-AI runs a Wan2.2 A14B pair (wan/configs/wan_t2v_A14B.py, wan_i2v_A14B.py): the high-noise expert
    denoises while the timestep is at least `boundary_ratio` x 1000, the low-noise one after, each with its CFG."""

    boundary_ratio: float
    shift: float
    cfg: float  # high-noise expert
    cfg_2: float  # low-noise expert
    steps: int


T2V_A14B = ExpertDefaults(boundary_ratio=0.875, shift=12.0, cfg=4.0, cfg_2=3.0, steps=40)
I2V_A14B = ExpertDefaults(boundary_ratio=0.9, shift=5.0, cfg=3.5, cfg_2=3.5, steps=40)


@dataclass(frozen=True)
class WanVariant:
    """What the sampler and the UI need to know about a loaded Wan transformer beyond its weights."""

    name: str
    default_shift: float
    default_cfg: float
    default_steps: int
    is_i2v: bool
    latent_channels: int
    is_vace: bool = False  # a VACE model: it samples with a Wan VACE Conditioning (controlnet/wan_vace.py)
    is_camera: bool = False  # a Fun-Camera model: it reads camera conditions (controlnet/wan_camera.py)
    experts: ExpertDefaults | None = None  # a shape Wan2.2 A14B experts have: the defaults of a two-expert run
    expand_timesteps: bool = False  # Wan2.2 TI2V-5B: a timestep per latent token (diffusers' expand_timesteps)
    # The shift at 832x480 and below, where the model's own default differs there (Wan's generate.py: I2V 3.0).
    low_res_shift: float | None = None

    def shift_for(self, width: int, height: int) -> float:
        """The default flow shift for a video of this size."""
        small = self.low_res_shift is not None and width * height <= _LOW_RES_AREA
        return self.low_res_shift if small else self.default_shift


def load_wan_transformer(path: str, dtype: torch.dtype | None = None, storage: torch.dtype | None = None,
                         expert: str = "high_noise") -> tuple[WanTransformer3DModel, WanVariant]:
    """A Wan transformer from a checkpoint file or a diffusers (model or pipeline) folder.

    `dtype` None keeps the dtype that most of the file's weights have (bf16 for fp8 files); otherwise every floating
    tensor is cast. Either way the modules diffusers keeps in float32 (time embedder, modulation tables, affine
    norms) stay float32 when the dtype is a half type, as `WanTransformer3DModel.from_pretrained` does.
    `storage` (fp8 / bf16) holds the Linear weights in that dtype, computed in `dtype` (loaders/storage.py); fp8
    files then keep their fp8 weights (and scales) instead of being dequantised.
    `expert` ("high_noise" / "low_noise") picks one of the two Wan2.2 A14B experts of a folder that holds both.
    """
    if dtype is not None and dtype not in COMPUTE_DTYPES:
        raise ValueError(f"A Wan transformer is computed in float32, float16 or bfloat16, not {dtype}.")
    if expert not in EXPERTS:
        raise ValueError(f"expert must be one of {list(EXPERTS)}, not {expert!r}.")
    pipeline = {}
    if os.path.isdir(path):
        path, pipeline = _expert_folder(path, expert)
        config, state_dict, original = _read_folder(path)
    else:
        config, state_dict, original = _read_file(path)
    dtype = dtype or _default_dtype(state_dict)
    if original:  # scale tensors are renamed with their weights
        state_dict = convert_original_to_diffusers(state_dict)
    prepare = storage_preparer(dtype, storage, partial(_to_model_tensors, dtype=dtype))
    model = _build_model(config, state_dict, os.path.basename(os.path.normpath(path)), prepare)
    return model, wan_variant({**dict(model.config), CAMERA_CONFIG: config.get(CAMERA_CONFIG)}, pipeline)


def wan_config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict:
    """The `WanTransformer3DModel` config of a state dict (original or diffusers layout), from key shapes alone."""
    if _is_original(shapes):
        shapes = {k: tuple(v.shape) for k, v in convert_original_to_diffusers(_meta(shapes)).items()}
    width, in_channels, *patch_size = _require(shapes, "patch")
    if width % _HEAD_DIM:
        raise ValueError(f"Unknown Wan width {width}: not a multiple of Wan's {_HEAD_DIM}-channel attention heads.")
    image, image_pos, added_kv = (_find(shapes, _ROLES[role]) for role in ("image", "image_pos", "added_kv"))
    return {
        "patch_size": tuple(patch_size),
        "num_attention_heads": width // _HEAD_DIM,
        "attention_head_dim": _HEAD_DIM,
        "in_channels": in_channels,
        "out_channels": _require(shapes, "out")[0] // prod(patch_size),
        "text_dim": _require(shapes, "text")[1],
        "freq_dim": _require(shapes, "time")[1],
        "ffn_dim": _require(shapes, "ffn")[0],
        "num_layers": _num_layers(shapes),
        "cross_attn_norm": _find(shapes, _ROLES["cross_attn_norm"]) is not None,
        "qk_norm": "rms_norm_across_heads" if _find(shapes, _ROLES["qk_norm"]) is not None else None,
        "eps": 1e-6,
        "image_dim": image[0] if image else None,
        "added_kv_proj_dim": added_kv[1] if added_kv else None,
        "pos_embed_seq_len": image_pos[1] if image_pos else None,
        **_vace_config(shapes),
        **_camera_config(shapes),
    }


def convert_original_to_diffusers(state_dict: dict) -> dict:
    """Original Wan keys -> diffusers keys (diffusers' converter plus the FLF2V gap); works on meta tensors.

    Keys the map does not know keep a (partly renamed) name of their own, so the strict key check reports them.
    """
    gaps = {new: state_dict[old] for old, new in _CONVERTER_GAPS.items() if old in state_dict}
    rest = {k: v for k, v in state_dict.items() if k not in _CONVERTER_GAPS}
    return {**convert_wan_transformer_to_diffusers(rest), **gaps}


def dequantise_fp8(state_dict: dict, dtype: torch.dtype) -> dict:
    """fp8 tensors -> `dtype`, exactly as ComfyUI's scaled-fp8 ops compute them: `weight.to(dtype) *
    scale_weight.to(dtype)`, fp8 biases and unscaled weights (ComfyUI's default scale is 1) cast. The marker and the
    scale tensors are consumed; other tensors pass through untouched.
    """
    scales = {k[: -len(_SCALE_WEIGHT)]: v for k, v in state_dict.items() if k.endswith(_SCALE_WEIGHT)}
    result = {}
    for key, tensor in state_dict.items():
        if key == _SCALED_FP8_MARKER or key.endswith(_SCALE_SUFFIXES):
            continue
        scale = scales.get(key[: -len(".weight")]) if key.endswith(".weight") else None
        if scale is not None:
            tensor = tensor.to(dtype) * scale.to(dtype)
        elif tensor.dtype in _FP8_DTYPES:
            tensor = tensor.to(dtype)
        result[key] = tensor
    return result


def wan_variant(config: dict, pipeline: dict | None = None) -> WanVariant:
    """Name and sampling defaults: the Wan README runs the 1.3B at shift 8 and cfg 6 (480p), the rest at 5 and 5;
    Wan's generate.py gives image-to-video 40 steps and shift 3 at 832x480, first-last-frame (and VACE 14B) shift 16;
    Wan2.2 TI2V-5B runs at shift 5, cfg 5, 50 steps (wan/configs/wan_ti2v_5B.py). `pipeline`: the model_index.json of
    the diffusers pipeline the model came from, whose `boundary_ratio` replaces the default switch point."""
    width = config["num_attention_heads"] * config["attention_head_dim"]
    size = _SIZES.get((width, config["num_layers"]))
    is_vace, is_camera = bool(config.get("vace_layers")), bool(config.get(CAMERA_CONFIG))
    is_i2v = config.get("image_dim") is not None or config["in_channels"] == _I2V_IN_CHANNELS
    wan22_i2v = config["in_channels"] == _I2V_IN_CHANNELS and config.get("image_dim") is None
    ti2v = config["out_channels"] == _WAN22_LATENT_CHANNELS
    task = ("VACE" if is_vace else "Fun-Camera" if is_camera else "FLF2V" if config.get("pos_embed_seq_len")
            else "TI2V" if ti2v
            else "I2V" if is_i2v else "T2V")
    layers = config["num_layers"]
    version = "Wan2.2" if ti2v or wan22_i2v else "Wan2.1"
    name = f"{version} {task} {size}" if size else f"{version}-like {task} transformer ({width} wide, {layers} layers)"
    origin = pipeline or {}
    experts = _expert_defaults(config, wan22_i2v, size, origin)
    if experts and size == "14B" and (wan22_i2v or "expert" in origin):
        which = origin["expert"].replace("_", "-") + " " if "expert" in origin else ""
        name = f"Wan2.2 {task} A14B {which}expert"
    elif experts and size == "14B":
        name += " (or a Wan2.2 A14B expert)"
    small = size == "1.3B"
    shift = 16.0 if task == "FLF2V" else 8.0 if small else 5.0
    return WanVariant(
        name=name, default_shift=shift, default_cfg=6.0 if small else 5.0, default_steps=40 if task == "I2V" else 50,
        is_i2v=is_i2v, latent_channels=config["out_channels"], is_vace=is_vace, is_camera=is_camera, experts=experts,
        expand_timesteps=ti2v or bool((pipeline or {}).get("expand_timesteps")),
        low_res_shift=3.0 if task == "I2V" else None,
    )


def _expert_defaults(config: dict, wan22_i2v: bool, size: str | None, origin: dict) -> ExpertDefaults | None:
    """The two-expert defaults of a model with the shape of an A14B expert (plain T2V but 1.3B, Wan2.2 I2V)."""
    plain_t2v = config["in_channels"] == _LATENT_CHANNELS and config.get("image_dim") is None
    if config.get("vace_layers") or not (wan22_i2v or (plain_t2v and size != "1.3B")):
        return None
    defaults = I2V_A14B if wan22_i2v else T2V_A14B
    ratio = origin.get("boundary_ratio")
    return defaults if ratio is None else replace(defaults, boundary_ratio=float(ratio))


def _expert_folder(path: str, expert: str) -> tuple[str, dict]:
    """(the folder to read, what the release says about the model: its model_index.json, plus `expert` where the
    folder holds both A14B experts). Other folders are returned as they are."""
    index_path = os.path.join(path, "model_index.json")
    origin = read_json(index_path) if os.path.isfile(index_path) else {}
    for layout in (0, 1):  # a diffusers pipeline, a Wan-AI release
        folders = {name: os.path.join(path, pair[layout]) for name, pair in EXPERTS.items()}
        if all(os.path.isdir(folder) for folder in folders.values()):
            return folders[expert], {**origin, "expert": expert}
    return path, origin


def _read_file(path: str) -> tuple[dict, dict[str, torch.Tensor], bool]:
    """Config and raw weights of one checkpoint file; family and Wan2.1 fit are checked from the header first."""
    name = os.path.basename(path)
    shapes = {k: shape for k, (shape, _) in strip_prefix(checkpoint_keys(path), _FILE_PREFIXES).items()}
    original = _require_wan(shapes, name)
    config = wan_config_from_shapes(shapes)
    _require_known_channels(config, name)
    return config, strip_prefix(load_state_dict(path), _FILE_PREFIXES), original


def _read_folder(folder: str) -> tuple[dict, dict[str, torch.Tensor], bool]:
    """A diffusers model folder, the `transformer/` folder of a pipeline, or a Wan-AI release folder.

    Wan-AI folders hold original-layout weights beside a config.json of their own `WanModel` class, so for them
    (and for folders without config.json) the config comes from the shapes.
    """
    if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isdir(os.path.join(folder, "transformer")):
        folder = os.path.join(folder, "transformer")
    name = os.path.basename(os.path.normpath(folder))
    files = weight_files_in_folder(folder, DIFFUSERS_STEM)
    shapes = {k: shape for f in files for k, (shape, _) in checkpoint_keys(f).items()}
    original = _require_wan(shapes, name)
    config_path = os.path.join(folder, "config.json")
    if original or not os.path.isfile(config_path):
        config = wan_config_from_shapes(shapes)
    else:
        config = read_json(config_path)
        class_name = config.get("_class_name", WanTransformer3DModel.__name__)
        if class_name not in (WanTransformer3DModel.__name__, WanVACETransformer3DModel.__name__):
            raise ValueError(f"'{name}' holds a {class_name}, not a WanTransformer3DModel.")
    _require_known_channels(config, name)
    return config, load_folder_state_dict(folder, DIFFUSERS_STEM), original


def _require_wan(shapes: dict, name: str) -> bool:
    """Refuse other model families and Wan add-ons by name; True for the original layout, False for diffusers."""
    original = require_transformer(shapes, name, "Wan")
    for prefix, what in _EXTENSIONS.items():
        if any(key.startswith(prefix) for key in shapes):
            raise ValueError(
                f"'{name}' is a {what} transformer; this loader takes plain Wan2.1 / Wan2.2 text- and image-to-video "
                f"models."
            )
    return original


def _require_known_channels(config: dict, name: str) -> None:
    """Wan2.1 reads 16-channel latents (T2V) or those plus 4 mask and 16 image channels with CLIP features (I2V);
    Wan2.1 Fun-Camera those plus 16 image channels (no mask) with CLIP features; Wan2.2's I2V experts take 36
    channels without CLIP, TI2V-5B the Wan2.2 VAE's 48 channels."""
    in_channels, out_channels, image = config["in_channels"], config["out_channels"], config.get("image_dim")
    if config.get(CAMERA_CONFIG):
        if image is None:
            raise ValueError(f"'{name}' is a Wan2.2 Fun A14B Camera transformer (a camera adapter without a CLIP image "
                             "embedder, one of two Wan2.2 experts); this loader takes the Wan2.1 Fun-Camera models.")
        if (in_channels, out_channels) == (_CAMERA_IN_CHANNELS, _LATENT_CHANNELS):
            return
    known = {(_LATENT_CHANNELS, _LATENT_CHANNELS), (_I2V_IN_CHANNELS, _LATENT_CHANNELS),
             (_WAN22_LATENT_CHANNELS, _WAN22_LATENT_CHANNELS)}
    if (in_channels, out_channels) in known and (image is None or in_channels == _I2V_IN_CHANNELS):
        return
    extra = " and a CLIP image embedder" if image else ""
    raise ValueError(f"'{name}' is a Wan-like transformer with {in_channels} input and {out_channels} output "
                     f"channels{extra}, not a Wan2.1 or Wan2.2 text-, image- or text-image-to-video model.")


def _to_model_tensors(state_dict: dict, dtype: torch.dtype) -> dict:
    """Dequantise, cast (float32 where diffusers keeps a module in float32)."""
    state_dict = dequantise_fp8(state_dict, dtype)
    keep = WanTransformer3DModel._keep_in_fp32_modules
    return {
        k: to_compute_dtype(v, torch.float32 if any(m in k.split(".") for m in keep) else dtype)
        for k, v in state_dict.items()
    }


def _build_model(config: dict, state_dict: dict, name: str, prepare) -> WanTransformer3DModel:
    check = partial(check_converted_layout, family="Wan")
    config = dict(config)
    camera_channels = config.pop(CAMERA_CONFIG, None)
    model_class = WanVACETransformer3DModel if config.get("vace_layers") else WanTransformer3DModel
    if camera_channels:
        model_class = _WithCameraAdapter(model_class, camera_channels)
    model = build_on_meta(model_class, config, state_dict, name, check, prepare)
    _materialise_rope(model)
    return model.eval()


@dataclass(frozen=True)
class _WithCameraAdapter:
    """`from_config` of a Wan model class with the Fun-Camera adapter attached (what build_on_meta calls)."""

    model_class: type
    channels: int

    def from_config(self, config: dict):
        return attach_camera_adapter(self.model_class.from_config(config), self.channels)


def _camera_config(shapes: dict) -> dict:
    """The camera adapter's input channels for a Fun-Camera file, {} for other models."""
    conv = _find(shapes, _ROLES["camera"])
    return {CAMERA_CONFIG: conv[1] // _UNSHUFFLED} if conv else {}


def _materialise_rope(model: WanTransformer3DModel) -> None:
    """The RoPE tables are non-persistent buffers, never in a file: compute them as the constructor does (float32)."""
    rope = model.rope
    model.rope = WanRotaryPosEmbed(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)


def _default_dtype(state_dict: dict) -> torch.dtype:
    """The floating dtype holding most of the parameters; fp8 files are computed in bf16, as ComfyUI does."""
    main = main_dtype(state_dict)
    return _FP8_COMPUTE_DTYPE if main in _FP8_DTYPES else main


def _is_original(keys) -> bool:
    """Only the original layout has the `head.` module (diffusers calls it proj_out / scale_shift_table)."""
    return any(key.startswith("head.") for key in keys)


def _meta(shapes: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


def _find(shapes: dict, pattern: str) -> tuple[int, ...] | None:
    return next((tuple(shape) for key, shape in shapes.items() if re.fullmatch(pattern, key)), None)


def _require(shapes: dict, role: str) -> tuple[int, ...]:
    shape = _find(shapes, _ROLES[role])
    if shape is None:
        readable = _ROLES[role].replace("\\d+", "N").replace("\\", "")
        raise ValueError(f"Not a complete Wan transformer: no tensor '{readable}' (diffusers name).")
    return shape


def _vace_config(shapes: dict) -> dict:
    """VACE's config fields, {} for other models. The files do not record after which blocks the VACE blocks add
    their hints: as ComfyUI (comfy/ldm/wan/model.py) and the VACE releases, after every (layers // count)-th block
    (1.3B: every 2nd of 30, 14B: every 5th of 40)."""
    embedding = _find(shapes, _ROLES["vace_patch"])
    indices = [int(m[1]) for m in (re.fullmatch(_ROLES["vace_block"], key) for key in shapes) if m]
    if embedding is None:
        return {}
    if not indices:
        raise ValueError("Not a complete Wan VACE transformer: it has a VACE patch embedding but no VACE blocks.")
    count, layers = max(indices) + 1, _num_layers(shapes)
    return {"vace_layers": list(range(0, layers, max(1, layers // count)))[:count], "vace_in_channels": embedding[1]}


def _num_layers(shapes: dict) -> int:
    """Highest block index + 1, so a file missing a whole block shows up as missing keys, not as a shallower model."""
    indices = [int(m[1]) for m in (re.fullmatch(_ROLES["block"], key) for key in shapes) if m]
    if not indices:
        raise ValueError("Not a complete Wan transformer: it has no transformer blocks.")
    return max(indices) + 1
