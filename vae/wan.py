"""Wan VAE latents <-> video frames, and the latent normalisation the Wan transformer works in.

The Wan2.1 VAE's latents are [B, 16, T, H/8, W/8], the Wan2.2 VAE's (Wan2.2-TI2V-5B) [B, 48, T, H/16, W/16], with
T = (frames - 1) / 4 + 1; the channel count tells the two apart. Two latent spaces:
- raw: what `AutoencoderKLWan.encode` gives (the posterior mean) and `decode` takes. LATENT holds raw latents, as
  ComfyUI's does (its `latent_formats.Wan21` normalises inside the model), so a latent made here decodes with
  ComfyUI's native VAE Decode and the reverse.
- model space: per channel (raw - mean) / std, what the transformer denoises. diffusers' WanPipeline samples there
  and un-normalises right before decoding (`latents / (1 / std) + mean`); `to_raw` and `to_model_space` are its
  formulas, written its way so the results are bit-identical.

The decoder is causal and runs one latent frame at a time with a feature cache (diffusers' `_decode`), so its
activations are one latent frame's (4 video frames) whatever the frame count; spatial tiles (diffusers' own
`tiled_decode`, switched on for one call) bound them for large frames. Frames are ComfyUI's IMAGE: [F, H, W, 3]
float32 in 0..1 on the CPU.

Progress and Cancel go by the decoder's (encoder's) calls: one latent frame (frame chunk) of one tile each.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from diffusers import AutoencoderKLWan

from ..loaders.cast_layers import execution_device
from ..work_units import Progress, counted_calls
from .tiling import decode_memory, one_at_a_time, tile_count, tiled_if_out_of_memory, tiling, wants_tiling

# Wan2.1's per-channel latent statistics. No checkpoint file carries them; these are AutoencoderKLWan's defaults,
# equal to ComfyUI's latent_formats.Wan21 and to the original wan/modules/vae.py.
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
# The Wan2.2 VAE's, from Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json; equal to ComfyUI's latent_formats.Wan22.
WAN22_LATENTS_MEAN = (-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
                      -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
                      -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
                      -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
                      -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
                      0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_LATENTS_STD = (0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
                     0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
                     0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
                     0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
                     0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
                     0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)
WAN22_LATENT_CHANNELS = 48
_STATISTICS = {16: (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD),
               WAN22_LATENT_CHANNELS: (WAN22_LATENTS_MEAN, WAN22_LATENTS_STD)}


# ---------------------------------------------------------------------------------------------- normalisation


def wan_latent_statistics(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(latents_mean, latents_std) of the Wan VAE whose latents have `channels` channels (16: Wan2.1, 48: Wan2.2)."""
    if channels not in _STATISTICS:
        raise ValueError(f"A Wan latent has 16 (Wan2.1 VAE) or 48 (Wan2.2 VAE) channels, not {channels}.")
    return _STATISTICS[channels]


def wan_latent_mean_std(vae_config: Mapping | None = None, channels: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as float32 [1, C, 1, 1, 1]: the VAE config's `latents_mean` / `latents_std`, else those of the
    Wan VAE whose latents have `channels` channels."""
    if vae_config:
        mean, std = vae_config["latents_mean"], vae_config["latents_std"]
    else:
        mean, std = wan_latent_statistics(channels)
    return torch.tensor(mean).view(1, -1, 1, 1, 1), torch.tensor(std).view(1, -1, 1, 1, 1)


def to_model_space(raw: torch.Tensor, vae_config: Mapping | None = None) -> torch.Tensor:
    """Raw VAE latents -> the transformer's space, as WanVideoToVideoPipeline: (raw - mean) * (1 / std)."""
    mean, std_inv = _mean_and_std_inv(raw, vae_config)
    return (raw - mean) * std_inv


def to_raw(model_latents: torch.Tensor, vae_config: Mapping | None = None) -> torch.Tensor:
    """The transformer's latents -> raw VAE latents, as WanPipeline before decoding: latents / (1 / std) + mean."""
    mean, std_inv = _mean_and_std_inv(model_latents, vae_config)
    return model_latents / std_inv + mean


def _mean_and_std_inv(like: torch.Tensor, vae_config: Mapping | None) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = wan_latent_mean_std(vae_config, like.shape[1])
    # The pipelines cast the statistics to the latents' dtype first, then take the reciprocal.
    return mean.to(like.device, like.dtype), 1.0 / std.to(like.device, like.dtype)


# ---------------------------------------------------------------------------------------------- decode / encode


# ComfyUI's figure for the Wan2.1 VAE (comfy/sd.py: 7000 x 8 x 8 per latent cell per byte of dtype); it bounds the
# peak measured by bench/wan_vae_decode_memory.py on CPU (~330k at 480x832, fp32).
DECODE_BYTES_PER_CELL = 7000 * 8 * 8
# ComfyUI's figure for the Wan2.2 VAE (comfy/sd.py: 8000 x 16 x 16; a latent cell is 16x16 pixels there).
WAN22_DECODE_BYTES_PER_CELL = 8000 * 16 * 16


def wan_decode_memory(vae: AutoencoderKLWan, latent_shape, tiled: bool, tile_size: int) -> int:
    """Bytes of activations decoding one frame needs beyond the weights (frames are decoded one at a time)."""
    per_cell = WAN22_DECODE_BYTES_PER_CELL if vae.config.z_dim == WAN22_LATENT_CHANNELS else DECODE_BYTES_PER_CELL
    return decode_memory(per_cell, vae, latent_shape, tiled, tile_size)


def decode_wan(vae: AutoencoderKLWan, latents: torch.Tensor, tile: str = "auto", tile_size: int = 256,
               tile_overlap: int = 64, progress: Progress | None = None) -> torch.Tensor:
    """Raw latents [B, C, T, h, w] -> IMAGE frames [B*F, rh, rw, 3] with F = 4(T-1)+1 (r: 8 for the Wan2.1 VAE,
    16 for Wan2.2's), the videos one after another.

    `tile`: "off" decodes each frame whole (exact: equals WanPipeline's output); "on" decodes in `tile_size` pixel
    tiles overlapping by `tile_overlap` pixels, blended linearly; "auto" tiles only frames larger than `tile_size`
    in either dimension, because a whole frame's activations grow with its pixel count while a tile's do not.
    "on" and "auto" give the same frames: diffusers never splits a frame that fits in one tile. Tiled frames differ
    slightly from whole ones (the middle block's attention and the convolutions' borders see one tile), and the
    decoded tiles of the whole video stay on the VAE's device until diffusers blends them.
    A whole-frame decode that runs out of memory is done again in tiles (logged).
    `progress(done, total)` runs after each latent frame of each tile of each video (see work_units); what it raises
    stops the decode there.
    """
    _check_latents(vae, latents)
    ratio = vae.spatial_compression_ratio
    tiled = wants_tiling(tile, max(latents.shape[-2:]) * ratio, tile_size, tile_overlap, ratio)
    videos, latent_frames, height, width = latents.shape[0], *latents.shape[2:]

    def run(tiles: bool) -> torch.Tensor:
        with tiling(vae, tiles, tile_size, tile_overlap):
            units = videos * latent_frames * tile_count(vae, height, width, ratio)
            with counted_calls([vae.decoder], units, progress), _cache_cleared(vae):
                return one_at_a_time(latents, lambda z: _decode_one(vae, z))

    return tiled_if_out_of_memory(run, tiled, "Wan VAE decode")


def encode_wan(vae: AutoencoderKLWan, frames: torch.Tensor, tile: str = "auto", tile_size: int = 256,
               tile_overlap: int = 64, progress: Progress | None = None) -> torch.Tensor:
    """IMAGE frames [F, H, W, 3] in 0..1 (F = 4n+1) -> raw latents [1, C, n+1, H/r, W/r] float32 on the CPU.

    The posterior mean, as WanVideoToVideoPipeline (`sample_mode="argmax"`) and ComfyUI's VAE Encode take it.
    Tiling as in `decode_wan`, blended in latent space by diffusers' `tiled_encode`. `progress(done, total)` runs
    after each chunk (the first frame, then 4 frames at a time) of each tile; what it raises stops the encode.
    """
    _check_frames(vae, frames)
    # As diffusers' VideoProcessor.preprocess_video: 0..1 -> -1..1 in float32, channels first, one video.
    return encode_wan_pixels(vae, frames.permute(3, 0, 1, 2).unsqueeze(0).float() * 2 - 1, tile, tile_size,
                             tile_overlap, progress)


def encode_wan_pixels(vae: AutoencoderKLWan, pixels: torch.Tensor, tile: str = "auto", tile_size: int = 256,
                      tile_overlap: int = 64, progress: Progress | None = None) -> torch.Tensor:
    """One video as the pipelines hand it to the VAE, [1, 3, F, H, W] in -1..1 (checked by the caller) -> raw
    latents [1, C, (F-1)/4+1, H/r, W/r] float32 on the CPU; tiling and progress as in `encode_wan`."""
    ratio = vae.spatial_compression_ratio
    tiled = wants_tiling(tile, max(pixels.shape[-2:]), tile_size, tile_overlap, ratio)
    param, device = next(vae.parameters()), execution_device(vae)
    frames, height, width = pixels.shape[2:]
    with tiling(vae, tiled, tile_size, tile_overlap), torch.no_grad():
        units = pixels.shape[0] * (1 + (frames - 1) // vae.config.scale_factor_temporal)
        units *= tile_count(vae, height, width, 1)
        with counted_calls([vae.encoder], units, progress), _cache_cleared(vae):
            return vae.encode(pixels.to(device, param.dtype)).latent_dist.mode().float().cpu()


@contextmanager
def _cache_cleared(vae: AutoencoderKLWan) -> Iterator[None]:
    """The causal feature cache emptied however the block ends: diffusers empties it only after a complete pass,
    and a stopped one would keep a frame's activations on the device."""
    try:
        yield
    finally:
        vae.clear_cache()


def _decode_one(vae: AutoencoderKLWan, latent: torch.Tensor) -> torch.Tensor:
    param, device = next(vae.parameters()), execution_device(vae)
    with torch.no_grad():
        video = vae.decode(latent.to(device, param.dtype)).sample
    # As diffusers' VideoProcessor.postprocess_video(output_type="pt"): x * 0.5 + 0.5 clamped to 0..1, in float32
    # whatever the VAE's dtype; moved off the device first so the float32 copy costs no device memory, and in
    # place because a whole video is hundreds of MB (81 frames at 832x480: 388 MB).
    video = video.to("cpu", torch.float32)
    return video.mul_(0.5).add_(0.5).clamp_(0, 1)[0].permute(1, 2, 3, 0)


# ---------------------------------------------------------------------------------------------- validation


def _check_latents(vae: AutoencoderKLWan, latents: torch.Tensor) -> None:
    if latents.ndim != 5 or latents.numel() == 0:
        image = " (an image latent: decode it with its image VAE)" if latents.ndim == 4 else ""
        raise ValueError(f"expected a video latent [B, C, T, H, W], got shape {tuple(latents.shape)}{image}.")
    channels, expected = latents.shape[1], vae.config.z_dim
    if channels != expected:
        origins = {WAN22_LATENT_CHANNELS: "the Wan2.2 VAE (Wan2.2-TI2V-5B)",
                   16: "the Wan2.1 VAE (Wan2.1 models and Wan2.2 A14B)"}
        raise ValueError(
            f"latent has {channels} channels, this Wan VAE expects {expected}: the latent comes from "
            f"{origins.get(channels, 'another model')}; decode it with that VAE."
        )
    if not torch.isfinite(latents).all():
        raise ValueError("The latent contains NaN or infinite values: sampling diverged (e.g. fp16 overflow or a "
                         "too high guidance scale); nothing to decode.")


def _check_frames(vae: AutoencoderKLWan, frames: torch.Tensor) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.numel() == 0:
        raise ValueError(f"expected IMAGE frames [F, H, W, 3], got shape {tuple(frames.shape)}.")
    count, height, width = frames.shape[:3]
    step = vae.config.scale_factor_temporal
    if count % step != 1:
        below = count - (count - 1) % step
        raise ValueError(
            f"The video has {count} frames; the Wan VAE needs {step}n+1 frames: trim it to {below} or extend it to "
            f"{below + step}."
        )
    ratio = vae.spatial_compression_ratio
    if height % ratio or width % ratio:
        raise ValueError(
            f"The video is {width}x{height}; the Wan VAE needs width and height that are multiples of {ratio}: "
            f"resize or crop it to {_nearest(width, ratio)}x{_nearest(height, ratio)}."
        )
    if not torch.isfinite(frames).all():
        raise ValueError("The frames contain NaN or infinite values; nothing to encode.")


def _nearest(size: int, ratio: int) -> int:
    return max(ratio, round(size / ratio) * ratio)
