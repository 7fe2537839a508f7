"""DC-AE latents <-> images, one image at a time, in overlapping tiles when the image is large.

Latents are the VAE's raw latent space (what `vae.decode` takes; ComfyUI's LATENT convention); images are
ComfyUI's IMAGE, [B, H, W, 3] float32 in 0..1 on the CPU. Tiling and blending are diffusers' own
(`AutoencoderDC.tiled_decode` / `tiled_encode`); this module only switches them on for one call.

Progress and Cancel go by the blocks of the decoder's (encoder's) stages: a dozen or more units per image or tile,
so even a whole 4K image stops soon after Cancel.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderDC

from ..loaders.cast_layers import execution_device
from ..work_units import Progress, counted_calls
from .tiling import decode_memory, one_at_a_time, tile_count, tiled_if_out_of_memory, tiling, wants_tiling

# AutoencoderDC's `enable_tiling` also derives the tile size in latent cells from the pixel one.
_DERIVED_TILING_STATE = ("tile_latent_min_height", "tile_latent_min_width")


# Peak activation bytes per latent cell per byte of dtype when decoding: measured on CPU with Sana's f32c32 DC-AE
# (random weights, fp32): +205 MiB at 256 px, +743 MiB at 512 px, i.e. ~760k; rounded up.
DECODE_BYTES_PER_CELL = 800_000


def dcae_decode_memory(vae: AutoencoderDC, latent_shape, tiled: bool, tile_size: int) -> int:
    """Bytes of activations a decode needs beyond the weights, for ComfyUI to make room before it."""
    return decode_memory(DECODE_BYTES_PER_CELL, vae, latent_shape, tiled, tile_size)


def decode_dcae(vae: AutoencoderDC, latents: torch.Tensor, tile: str = "auto", tile_size: int = 1024,
                tile_overlap: int = 128, progress: Progress | None = None) -> torch.Tensor:
    """Raw latents [B, C, h, w] -> IMAGE [B, h*32, w*32, 3].

    `tile`: "off" decodes each image whole (exact); "on" decodes in `tile_size` pixel tiles that overlap by
    `tile_overlap` pixels and are blended linearly; "auto" tiles only images larger than `tile_size` in either
    dimension, because the whole-image decode's memory grows with the pixel count (Sana's 4K images need tiling)
    while one tile's does not. "on" and "auto" give the same images: diffusers never splits an image that fits in
    one tile.
    A whole-frame decode that runs out of memory is done again in tiles (logged).
    `progress(done, total)` runs after each decoder block of each tile of each image (see work_units); what it
    raises stops the decode there.
    """
    _check_latents(vae, latents)
    ratio = vae.spatial_compression_ratio
    tiled = wants_tiling(tile, max(latents.shape[-2:]) * ratio, tile_size, tile_overlap, ratio)
    blocks = _stage_blocks(vae.decoder.up_blocks)

    def run(tiles: bool) -> torch.Tensor:
        with tiling(vae, tiles, tile_size, tile_overlap, _DERIVED_TILING_STATE):
            units = latents.shape[0] * tile_count(vae, *latents.shape[-2:], ratio) * len(blocks)
            with counted_calls(blocks, units, progress):
                return one_at_a_time(latents, lambda z: _decode_one(vae, z))

    return tiled_if_out_of_memory(run, tiled, "DC-AE decode")


def encode_dcae(vae: AutoencoderDC, images: torch.Tensor, tile: str = "auto", tile_size: int = 1024,
                tile_overlap: int = 128, progress: Progress | None = None) -> torch.Tensor:
    """IMAGE [B, H, W, 3] in 0..1 -> raw latents [B, C, H/32, W/32] float32 on the CPU (for img2img).

    Tiling as in `decode_dcae`, blended in latent space by diffusers' `tiled_encode`; `progress` as there, per
    encoder block.
    """
    _check_images(vae, images)
    ratio = vae.spatial_compression_ratio
    tiled = wants_tiling(tile, max(images.shape[1:3]), tile_size, tile_overlap, ratio)
    blocks = _stage_blocks(vae.encoder.down_blocks)
    with tiling(vae, tiled, tile_size, tile_overlap, _DERIVED_TILING_STATE):
        units = images.shape[0] * tile_count(vae, *images.shape[1:3], 1) * len(blocks)
        with counted_calls(blocks, units, progress):
            return one_at_a_time(images, lambda x: _encode_one(vae, x))


def _stage_blocks(stages: torch.nn.ModuleList) -> list[torch.nn.Module]:
    """The blocks (and resamplers) of every stage, each called once per pass: the units of a decode / encode."""
    return [block for stage in stages for block in stage]


def _decode_one(vae: AutoencoderDC, latent: torch.Tensor) -> torch.Tensor:
    param, device = next(vae.parameters()), execution_device(vae)
    with torch.no_grad():
        sample = vae.decode(latent.to(device, param.dtype)).sample
    # As diffusers' VaeImageProcessor.postprocess, in float32 whatever the VAE's dtype.
    return (sample.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def _encode_one(vae: AutoencoderDC, image: torch.Tensor) -> torch.Tensor:
    param, device = next(vae.parameters()), execution_device(vae)
    pixels = image.permute(0, 3, 1, 2).to(device, param.dtype) * 2 - 1
    with torch.no_grad():
        return vae.encode(pixels).latent.float().cpu()


def _check_latents(vae: AutoencoderDC, latents: torch.Tensor) -> None:
    if latents.ndim != 4 or latents.numel() == 0:
        video = " (a video latent: decode it with the Wan VAE)" if latents.ndim == 5 else ""
        raise ValueError(f"expected an image latent [B, C, H, W], got shape {tuple(latents.shape)}{video}.")
    channels, expected = latents.shape[1], vae.config.latent_channels
    if channels != expected:
        raise ValueError(
            f"latent has {channels} channels, this DC-AE expects {expected}: the latent comes from another model "
            f"(Wan and SD3/Flux latents have 16 channels, SD/SDXL 4); decode it with that model's VAE."
        )
    if not torch.isfinite(latents).all():
        raise ValueError("The latent contains NaN or infinite values: sampling diverged (e.g. fp16 overflow or a "
                         "too high guidance scale); nothing to decode.")


def _check_images(vae: AutoencoderDC, images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.numel() == 0:
        raise ValueError(f"expected an IMAGE [B, H, W, 3], got shape {tuple(images.shape)}.")
    ratio = vae.spatial_compression_ratio
    height, width = images.shape[1:3]
    if height % ratio or width % ratio:
        raise ValueError(
            f"The image is {width}x{height}; DC-AE needs width and height that are multiples of {ratio}: resize or "
            f"crop it to {_nearest(width, ratio)}x{_nearest(height, ratio)}."
        )


def _nearest(size: int, ratio: int) -> int:
    return max(ratio, round(size / ratio) * ratio)
