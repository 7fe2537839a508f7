"""Building a model on the meta device and adopting a file's tensors as its weights, after a strict key check.

On the meta device a model costs no memory for its random init, and `load_state_dict(assign=True)` takes the loaded
tensors themselves, so the weights exist once. The key check first turns a file that does not fit into a ValueError
that names the keys, instead of torch's wall of text (or a model with holes). Each loader keeps its own wording of
that error; the comparison behind it is `key_mismatch`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

from .checkpoint import tensor_shapes
from .gguf import load_weights, to_compute_dtype

COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

Shapes = Mapping[str, Sequence[int]]


class KeyMismatch(NamedTuple):
    """How a file's tensors fail to fill a model exactly; all three lists are empty when they fit."""

    missing: list[str]  # the model's keys the file lacks, in the model's order
    unexpected: list[str]  # the file's keys the model lacks, in the file's order
    wrong_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, file shape, model shape), model's order


def key_mismatch(model: nn.Module, shapes: Shapes) -> KeyMismatch:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return KeyMismatch(
        missing=[k for k in expected if k not in shapes],
        unexpected=[k for k in shapes if k not in expected],
        wrong_shape=[(k, tuple(shapes[k]), shape) for k, shape in expected.items()
                     if k in shapes and tuple(shapes[k]) != shape],
    )


def check_layout(model: nn.Module, shapes: Shapes, name: str, architecture: str) -> None:
    """Raise ValueError unless `shapes` fills every tensor of `model` with its exact shape, and nothing else.

    The message names the first three keys of each kind, in name order (the VAE loaders' wording).
    """
    mismatch = key_mismatch(model, shapes)
    wrong = [f"{k} {found} vs {expected}" for k, found, expected in sorted(mismatch.wrong_shape)]
    problems = [f"{len(items)} {what} (first: {', '.join(items[:3])})"
                for what, items in (("missing keys", sorted(mismatch.missing)),
                                    ("unexpected keys", sorted(mismatch.unexpected)),
                                    ("tensors with other shapes (file vs model)", wrong)) if items]
    if problems:
        raise ValueError(
            f"'{name}' does not match the {architecture} architecture built for it: {'; '.join(problems)}."
        )


def check_converted_layout(model: nn.Module, shapes: Shapes, name: str, family: str) -> None:
    """As `check_layout`, worded for transformers whose keys may have been renamed from another layout.

    The message names the first five keys of each kind as the model names them (diffusers layout), which is not
    necessarily what the file holds, and says that the file is incomplete or an unknown `family` variant.
    """
    mismatch = key_mismatch(model, shapes)
    wrong = [f"{k} {found} instead of {expected}" for k, found, expected in mismatch.wrong_shape]
    problems = [
        f"{label} {len(keys)} tensor(s): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for label, keys in (("missing", mismatch.missing), ("unexpected", mismatch.unexpected),
                            ("wrong shape for", wrong)) if keys
    ]
    if problems:
        raise ValueError(
            f"'{name}' does not fit the {family} transformer its shapes describe ({'; '.join(problems)}; names in "
            f"diffusers layout). The file is incomplete or a {family} variant this loader does not know."
        )


def build_on_meta(model_class, config: dict, state_dict: Mapping[str, torch.Tensor], name: str,
                  check: Callable[[nn.Module, Shapes, str], None],
                  prepare: Callable[[nn.Module, dict], dict] | None = None):
    """`model_class.from_config(config)` holding the state dict's tensors, once `check` found that they fit.

    `prepare(model_on_meta, state_dict)` gives the tensors the model is to hold, where that depends on its modules
    (weight storage dtypes, loaders/storage.py). Buffers no file holds (positional tables) stay on meta: the caller
    computes them.
    """
    with torch.device("meta"):
        model = model_class.from_config(config)
    if prepare is not None:
        state_dict = prepare(model, dict(state_dict))
    check(model, tensor_shapes(state_dict), name)
    load_weights(model, state_dict)
    return model


def left_on_meta(model: nn.Module) -> list[str]:
    """The parameters and buffers no tensor of the file replaced: they have no data."""
    return [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]


def cast_floats(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors in `dtype`; integer and bool tensors (counters, masks) as they are; GGUF-quantized ones stay
    quantized, to be computed in `dtype`."""
    return {k: to_compute_dtype(v, dtype) for k, v in state_dict.items()}


def stored_dtype(state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The file's floating dtype when it has one that layers compute in, else float32 (mixed or fp8 files)."""
    dtypes = {v.dtype for v in state_dict.values() if v.is_floating_point()}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    return dtype if dtype in COMPUTE_DTYPES else torch.float32


def main_dtype(state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The floating dtype holding most of the parameters (small fp32 norms in a bf16 file do not count)."""
    counts = Counter()
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] += tensor.numel()
    return counts.most_common(1)[0][0] if counts else torch.float32
