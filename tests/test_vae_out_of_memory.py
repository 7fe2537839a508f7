"""A whole-frame decode that runs out of memory is redone in tiles with a log line, for both VAEs."""

import logging

import pytest
import torch
from tiny_dcae import tiny_dcae
from tiny_wan_vae import tiny_wan_vae

from sana_wan.vae.dcae import decode_dcae
from sana_wan.vae.wan import decode_wan


def _fail_on_large_inputs(decoder, max_cells):
    """The decoder raises CUDA's out-of-memory error for latents wider than `max_cells`, like a small GPU."""
    forward = decoder.forward

    def limited(z, *args, **kwargs):
        if z.shape[-1] > max_cells:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(z, *args, **kwargs)

    decoder.forward = limited


@pytest.mark.parametrize("family", ["dcae", "wan"])
def test_out_of_memory_falls_back_to_tiles(family, caplog):
    if family == "dcae":
        vae, latents, decode, ratio = tiny_dcae(), torch.randn(1, 32, 2, 6), decode_dcae, 32
    else:
        vae, latents, decode, ratio = tiny_wan_vae(), torch.randn(1, 16, 1, 2, 6), decode_wan, 8
    tiled = decode(vae, latents, "on", 4 * ratio, ratio)
    _fail_on_large_inputs(vae.decoder, max_cells=4)
    with torch.inference_mode(), caplog.at_level(logging.WARNING):
        fallback = decode(vae, latents, "off", 4 * ratio, ratio)
    assert torch.equal(fallback, tiled)
    assert "out of memory on whole frames, decoding again in tiles" in caplog.text
    assert not vae.use_tiling, "the tiling state is restored after the fallback"
