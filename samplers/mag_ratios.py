"""MagCache's calibrated magnitude ratios for the Wan2.1 text-to-video models.

MagCache (Ma et al. 2025, "MagCache: Fast Video Generation with Magnitude-Aware Cache", arXiv 2506.09045) decides
which steps to skip from a per-step curve of how much the transformer's residual shrinks from one step to the next,
measured once per model. The curves are the authors' (https://github.com/Zehong-Ma/MagCache, Apache-2.0,
MagCache4Wan2.1/magcache_generate.py: 50 UniPC steps, the cond forwards' entries; the uncond ones differ in the
fourth decimal), with their recommended maximum of consecutive skips (E012K2R02 for 1.3B, E024K6R02 for 14B).
diffusers' MagCacheConfig resamples a curve to the run's number of steps.
"""

from __future__ import annotations

WAN_T2V_1_3B = (
    1.0, 1.0124, 1.00166, 0.99791, 0.99682, 0.99634, 0.99567, 0.99416, 0.99578, 0.9957, 0.99511, 0.99535, 0.99552,
    0.99541, 0.9954, 0.99489, 0.99518, 0.99484, 0.99481, 0.99415, 0.99419, 0.99396, 0.99388, 0.99349, 0.99309, 0.9927,
    0.99228, 0.99171, 0.99137, 0.99068, 0.99005, 0.98944, 0.98849, 0.98758, 0.98644, 0.98504, 0.9836, 0.98202,
    0.97977, 0.97717, 0.9741, 0.97003, 0.96538, 0.9593, 0.95086, 0.94013, 0.92402, 0.90241, 0.86821, 0.81838,
)
WAN_T2V_14B = (
    1.0, 1.02504, 1.00025, 0.9985, 0.99779, 0.9966, 0.99482, 0.99467, 0.99664, 0.99434, 0.99533, 0.99468, 0.99438,
    0.99516, 0.99384, 0.99404, 0.99517, 0.99409, 0.99428, 0.99347, 0.99418, 0.99271, 0.99313, 0.99215, 0.99218,
    0.99216, 0.99163, 0.99138, 0.98982, 0.98996, 0.9887, 0.98772, 0.98767, 0.98573, 0.98501, 0.9838, 0.98177, 0.98037,
    0.97678, 0.97546, 0.97184, 0.96711, 0.96349, 0.95629, 0.94926, 0.93964, 0.92511, 0.90693, 0.8796, 0.86111,
)

# (width, blocks) of a text-to-video Wan2.1 -> (ratios, max consecutive skips)
WAN_MAG_CACHE = {(1536, 30): (WAN_T2V_1_3B, 2), (5120, 40): (WAN_T2V_14B, 6)}


def wan_mag_cache_settings(config) -> tuple[tuple[float, ...], int]:
    """(ratios, max consecutive skips) for a Wan transformer's config; ValueError for a model nobody calibrated."""
    width = config.num_attention_heads * config.attention_head_dim
    settings = WAN_MAG_CACHE.get((width, config.num_layers))
    if settings is None or config.in_channels != config.out_channels:
        raise ValueError(f"MagCache needs magnitude ratios calibrated for the model; there are published ones for "
                         f"the Wan2.1 text-to-video 1.3B and 14B only, not for this {width}-wide, "
                         f"{config.num_layers}-block model. Use the first_block or sea cache instead.")
    return settings
