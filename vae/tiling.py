"""What the DC-AE and Wan decoders share: one call's tiling switch, tile option checks, one item at a time.

Both use diffusers' own tiling (`enable_tiling` / `tiled_decode` / `tiled_encode`); this module only switches it on
or off for one call and puts the VAE's tiling state back afterwards, whatever happened in between, and counts the
tiles diffusers will make (for progress).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

logger = logging.getLogger(__name__)

TILE_MODES = ("auto", "on", "off")

# Every attribute diffusers' `enable_tiling` writes on every VAE, so one call's tiling never leaks into the next.
_TILING_STATE = ("use_tiling", "tile_sample_min_height", "tile_sample_min_width", "tile_sample_stride_height",
                 "tile_sample_stride_width")


def wants_tiling(tile: str, size: int, tile_size: int, tile_overlap: int, ratio: int) -> bool:
    """Whether to tile an image or frame whose larger side is `size` pixels; ValueError for unusable options."""
    if tile not in TILE_MODES:
        raise ValueError(f"tile must be one of {TILE_MODES}, got {tile!r}.")
    # diffusers steps through the latent by stride // ratio: a stride off the latent grid would misplace the tiles.
    if tile_size < ratio or tile_size % ratio or tile_overlap % ratio or not 0 <= tile_overlap < tile_size:
        raise ValueError(
            f"tile_size ({tile_size}) and tile_overlap ({tile_overlap}) must be multiples of {ratio} pixels (one "
            f"latent cell), with 0 <= tile_overlap < tile_size."
        )
    return tile == "on" or (tile == "auto" and size > tile_size)


def whole_frames_fit(model_bytes: int, whole_frame_bytes: int, device_memory: int) -> bool:
    """Whether "auto" decodes whole frames on a device: when the VAE's weights and one whole frame's activations
    take at most half the device's total memory (RAM for the CPU), else tiles.

    A function of the sizes and the device alone, never of the memory free at the moment: tiled and whole frames
    differ, so the same latent must always take the same path. (A whole-frame decode that still runs out of
    memory is done again in tiles: that gives an image where there would be none.)
    """
    return model_bytes + whole_frame_bytes <= device_memory // 2


@contextmanager
def tiling(vae, enabled: bool, tile_size: int, tile_overlap: int,
           derived_state: tuple[str, ...] = ()) -> Iterator[None]:
    """`tile_size` pixel tiles overlapping by `tile_overlap` (or none) inside the block, then the VAE as it was.

    `derived_state`: attributes a VAE's `enable_tiling` writes beyond the common ones, to be put back too.
    """
    saved = {name: getattr(vae, name) for name in (*_TILING_STATE, *derived_state)}
    try:
        if enabled:
            stride = tile_size - tile_overlap
            vae.enable_tiling(tile_size, tile_size, stride, stride)
        else:
            vae.disable_tiling()
        yield
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)


def tile_count(vae, height: int, width: int, ratio: int) -> int:
    """How many tiles diffusers splits one image / frame into, inside `tiling`: `height` x `width` latent cells for
    a decode (`ratio` = the VAE's spatial compression), pixels for an encode (`ratio` 1). One when tiling is off or
    the frame fits one tile, as diffusers' `_decode` / `_encode` decide; else its `tiled_*` loops' tile count."""
    if not vae.use_tiling or (height <= vae.tile_sample_min_height // ratio
                              and width <= vae.tile_sample_min_width // ratio):
        return 1
    return (math.ceil(height / (vae.tile_sample_stride_height // ratio))
            * math.ceil(width / (vae.tile_sample_stride_width // ratio)))


def one_at_a_time(batch: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Bound memory to one item's activations (an image, a video), whatever the batch size."""
    return torch.cat([fn(item) for item in batch.split(1)])


def tiled_if_out_of_memory(run: Callable[[bool], torch.Tensor], tiled: bool, what: str) -> torch.Tensor:
    """`run(tiled)`, and when a whole-frame run runs out of memory, the same run in tiles, with a log line.

    A decode that fits only in tiles then still gives its images instead of failing the prompt.
    """
    if tiled:
        return run(True)
    try:
        return run(False)
    except torch.OutOfMemoryError:
        logger.warning("%s: out of memory on whole frames, decoding again in tiles.", what)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return run(True)


def decode_memory(bytes_per_cell: float, vae, latent_shape, tiled: bool, tile_size: int) -> int:
    """Activation bytes of decoding one image / frame: `bytes_per_cell` per latent cell per byte of the VAE's
    dtype, over the whole latent or over one tile of `tile_size` pixels."""
    ratio = vae.spatial_compression_ratio
    height, width = latent_shape[-2:]
    if tiled:
        height, width = min(height, tile_size // ratio), min(width, tile_size // ratio)
    element = torch.finfo(vae.dtype).bits // 8
    return int(bytes_per_cell * height * width * element)
