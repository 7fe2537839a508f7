"""Long nodes report progress and honour Cancel between units of work (issue 14, finding 3): Wan VAE decode and encode
(one latent frame / frame chunk of one tile), DC-AE decode and encode (one stage block of one tile), the text
encoders (one layer). A `progress` that raises stops the work after the unit it was told about, leaves no output
and no state behind; outputs are bit-identical with and without a `progress`. Also: the decode nodes' "auto" tiling
is a function of sizes and the device's total memory, never of the memory free at the moment."""

import pytest
import torch
from tiny_dcae import tiny_dcae
from tiny_gemma import tiny_gemma2
from tiny_gemma import tokenizer_from_spm as gemma_tokenizer
from tiny_gemma import train_spm_bytes as gemma_spm
from tiny_umt5 import tiny_umt5
from tiny_umt5 import tokenizer_from_spm as umt5_tokenizer
from tiny_umt5 import train_spm_bytes as umt5_spm
from tiny_wan_vae import tiny_wan_vae

from sana_wan import comfy_bridge as bridge
from sana_wan.nodes import decode as decode_nodes
from sana_wan.nodes.decode import DCAEDecode, WanVAEDecode, WanVAEEncode, _load_for_decode
from sana_wan.nodes.text import SanaTextEncode, WanTextEncode
from sana_wan.text.sana_prompt import encode_sana_prompt
from sana_wan.text.wan_prompt import encode_wan_prompt
from sana_wan.vae.dcae import dcae_decode_memory, decode_dcae, encode_dcae
from sana_wan.vae.tiling import whole_frames_fit
from sana_wan.vae.wan import decode_wan, encode_wan, wan_decode_memory

GB = 2**30


class Cancelled(Exception):
    pass


class Recorder:
    """A `progress` that records its calls and raises Cancelled at the `cancel_at`-th."""

    def __init__(self, cancel_at: int | None = None):
        self.calls, self.cancel_at = [], cancel_at

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))
        if len(self.calls) == self.cancel_at:
            raise Cancelled


def calls_of(modules) -> tuple[list, list]:
    """(a list that grows by one per call of any of `modules`, the hook handles)."""
    seen = []
    return seen, [m.register_forward_hook(lambda *_: seen.append(1)) for m in modules]


def complete_and_cancelled(work, units_of, expected_total: int):
    """Runs `work(progress)` whole and cancelled at the first unit; checks the progress seen in each and returns the
    complete output. `units_of` are the modules whose calls are the units."""
    complete = Recorder()
    output = work(complete)
    assert complete.calls == [(done, expected_total) for done in range(1, expected_total + 1)]
    cancel = Recorder(cancel_at=1)
    seen, handles = calls_of(units_of)
    with pytest.raises(Cancelled):
        work(cancel)
    for handle in handles:
        handle.remove()
    assert cancel.calls == [(1, expected_total)] and len(seen) == 1, "stopped after the first unit"
    return output


def no_hooks_left(*modules) -> bool:
    return all(not m._forward_hooks for module in modules for m in module.modules())


# ---------------------------------------------------------------------------------------------- Wan VAE


@pytest.fixture(scope="module")
def wan_vae():
    return tiny_wan_vae(seed=1)


@pytest.mark.parametrize("tile, units", [("off", 2 * 3), ("on", 2 * 3 * 4)])
def test_wan_vae_decode_reports_each_latent_frame_of_each_tile_and_stops_after_the_first(wan_vae, tile, units):
    """2 videos x 3 latent frames, whole or in 2 x 2 tiles (32 px tiles, stride 24, over 48 px)."""
    latents = torch.randn(2, 16, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    options = {"tile": tile, "tile_size": 32, "tile_overlap": 8}
    frames = complete_and_cancelled(lambda progress: decode_wan(wan_vae, latents, progress=progress, **options),
                                    [wan_vae.decoder], units)
    assert torch.equal(frames, decode_wan(wan_vae, latents, **options)), "the same frames without a progress"
    assert all(cached is None for cached in wan_vae._feat_map), "no cached frame activations left behind"
    assert not wan_vae.use_tiling and no_hooks_left(wan_vae)


@pytest.mark.parametrize("tile, units", [("off", 3), ("on", 3 * 9)])
def test_wan_vae_encode_reports_each_frame_chunk_of_each_tile_and_stops_after_the_first(wan_vae, tile, units):
    """9 frames are 3 chunks (1 + 4 + 4), whole or in 3 x 3 tiles (32 px, stride 16, over 48 px)."""
    frames = torch.rand(9, 48, 48, 3, generator=torch.Generator().manual_seed(2))
    options = {"tile": tile, "tile_size": 32, "tile_overlap": 16}
    latents = complete_and_cancelled(lambda progress: encode_wan(wan_vae, frames, progress=progress, **options),
                                     [wan_vae.encoder], units)
    assert torch.equal(latents, encode_wan(wan_vae, frames, **options))
    assert all(cached is None for cached in wan_vae._enc_feat_map)
    assert not wan_vae.use_tiling and no_hooks_left(wan_vae)


# ---------------------------------------------------------------------------------------------- DC-AE


@pytest.fixture(scope="module")
def dcae():
    return tiny_dcae(seed=1)


def _blocks(stages):
    return [block for stage in stages for block in stage]


@pytest.mark.parametrize("tile, tiles", [("off", 1), ("on", 16)])
def test_dcae_decode_reports_each_block_of_each_tile_and_stops_after_the_first(dcae, tile, tiles):
    """A 320 px image whole, or in 4 x 4 tiles of 128 px (stride 96 px = 3 latent cells, over 10 cells)."""
    latents = torch.randn(1, 32, 10, 10, generator=torch.Generator().manual_seed(3))
    blocks = _blocks(dcae.decoder.up_blocks)
    options = {"tile": tile, "tile_size": 128, "tile_overlap": 32}
    images = complete_and_cancelled(lambda progress: decode_dcae(dcae, latents, progress=progress, **options),
                                    blocks, tiles * len(blocks))
    assert torch.equal(images, decode_dcae(dcae, latents, **options))
    assert not dcae.use_tiling and no_hooks_left(dcae)


def test_dcae_tiled_encode_reports_each_block_of_each_tile(dcae):
    images = torch.rand(2, 96, 96, 3, generator=torch.Generator().manual_seed(4))
    blocks = _blocks(dcae.encoder.down_blocks)
    options = {"tile": "on", "tile_size": 64, "tile_overlap": 32}  # 3 x 3 tiles per image
    latents = complete_and_cancelled(lambda progress: encode_dcae(dcae, images, progress=progress, **options),
                                     blocks, 2 * 9 * len(blocks))
    assert torch.equal(latents, encode_dcae(dcae, images, **options))


# ---------------------------------------------------------------------------------------------- text encoders


@pytest.fixture(scope="module")
def gemma():
    tokenizer = gemma_tokenizer(gemma_spm())
    return tiny_gemma2(len(tokenizer)).model, tokenizer


@pytest.fixture(scope="module")
def umt5():
    tokenizer = umt5_tokenizer(umt5_spm())
    return tiny_umt5(len(tokenizer)), tokenizer


def test_gemma_reports_each_layer_and_stops_after_the_first(gemma):
    encoder, tokenizer = gemma
    layers = encoder.layers
    embeds, mask = complete_and_cancelled(
        lambda progress: encode_sana_prompt(encoder, tokenizer, ["a cat", "a dog"], progress=progress), layers,
        len(layers))
    expected = encode_sana_prompt(encoder, tokenizer, ["a cat", "a dog"])
    assert torch.equal(embeds, expected[0]) and torch.equal(mask, expected[1]) and no_hooks_left(encoder)


def test_umt5_reports_each_block_and_stops_after_the_first(umt5):
    encoder, tokenizer = umt5
    blocks = encoder.encoder.block
    embeds, mask = complete_and_cancelled(
        lambda progress: encode_wan_prompt(encoder, tokenizer, ["a cat", "a dog"], 32, progress=progress), blocks,
        len(blocks))
    expected = encode_wan_prompt(encoder, tokenizer, ["a cat", "a dog"], 32)
    assert torch.equal(embeds, expected[0]) and torch.equal(mask, expected[1]) and no_hooks_left(encoder)


# ---------------------------------------------------------------------------------------------- nodes


@pytest.fixture
def comfy_progress(monkeypatch):
    """ComfyUI's progress bar and Cancel as the bridge sees them: every bar update recorded, Cancel pressed at the
    `state["cancel_at"]`-th interrupt check."""
    updates, state = [], {"checks": 0, "cancel_at": None}

    class Bar:
        def __init__(self, total):
            self.total = total

        def update(self, value, preview_image=None):
            updates.append((value, self.total))

    def check_interrupt():
        state["checks"] += 1
        if state["checks"] == state["cancel_at"]:
            raise Cancelled

    monkeypatch.setattr(bridge, "Progress", Bar)
    monkeypatch.setattr(bridge, "check_interrupt", check_interrupt)
    return updates, state


def test_the_wan_decode_node_shows_each_latent_frame_and_stops_on_cancel(wan_vae, comfy_progress):
    updates, state = comfy_progress
    handle = bridge.ModelHandle(wan_vae, "vae", family="wan")
    samples = {"samples": torch.randn(1, 16, 4, 2, 2)}
    frames, count = WanVAEDecode().decode(handle, samples, "off", 256, 64)
    assert updates == [(1, 4), (2, 4), (3, 4), (4, 4)] and count == 13
    updates.clear()
    state.update(checks=0, cancel_at=2)
    with pytest.raises(Cancelled):
        WanVAEDecode().decode(handle, samples, "off", 256, 64)
    assert updates == [(1, 4)], "Cancel is checked before each unit is shown, and the decode stops there"


def test_the_wan_encode_node_stops_on_cancel(wan_vae, comfy_progress):
    updates, state = comfy_progress
    handle = bridge.ModelHandle(wan_vae, "vae", family="wan")
    state["cancel_at"] = 1
    with pytest.raises(Cancelled):
        WanVAEEncode().encode(handle, torch.rand(9, 16, 16, 3))
    assert updates == [] and state["checks"] == 1


def test_the_dcae_decode_node_shows_each_block(dcae, comfy_progress):
    updates, _ = comfy_progress
    handle = bridge.ModelHandle(dcae, "vae", family="sana")
    DCAEDecode().decode(handle, {"samples": torch.randn(1, 32, 2, 2)}, "off", 1024, 128)
    blocks = len(_blocks(dcae.decoder.up_blocks))
    assert updates == [(done, blocks) for done in range(1, blocks + 1)]


@pytest.mark.parametrize("node, encoder", [(SanaTextEncode, "gemma"), (WanTextEncode, "umt5")])
def test_the_text_encode_nodes_show_prompt_and_negative_on_one_bar_and_stop_on_cancel(request, comfy_progress, node,
                                                                                     encoder):
    updates, state = comfy_progress
    module, tokenizer = request.getfixturevalue(encoder)
    handle = bridge.ModelHandle(module, "text_encoder", tokenizer=tokenizer)
    args = (handle, "a red fox", "blurry") + ((False,) if node is WanTextEncode else ())
    node().encode(*args)
    assert updates == [(1, 4), (2, 4), (3, 4), (4, 4)], "2 layers for the prompt, then 2 for the negative"
    updates.clear()
    state.update(checks=0, cancel_at=3)
    with pytest.raises(Cancelled):
        node().encode(*args)
    assert updates == [(1, 4), (2, 4)]


# ---------------------------------------------------------------------------------------------- auto tiling


def test_whole_frames_when_the_vae_and_a_whole_frame_take_at_most_half_the_device():
    assert whole_frames_fit(GB // 2, GB // 2, 2 * GB) and not whole_frames_fit(GB // 2, GB // 2 + 1, 2 * GB)
    # Sana 4K (128 x 128 latent cells) in bf16: 26 GB of activations; whole on an 80 GB card, tiles on a 24 GB one.
    whole_4k = dcae_decode_memory(tiny_dcae().to(torch.bfloat16), (1, 32, 128, 128), False, 1024)
    assert whole_frames_fit(GB, whole_4k, 80 * GB) and not whole_frames_fit(GB, whole_4k, 24 * GB)


@pytest.mark.parametrize("total, expected", [(2**50, "off"), (GB, "on")])
def test_auto_tiling_follows_the_total_memory_and_never_the_free_memory(monkeypatch, dcae, total, expected):
    handle = bridge.ModelHandle(dcae, "vae", family="sana")
    monkeypatch.setattr(bridge, "total_memory", lambda device: total)
    modes = []
    for free in (0, 2**50):
        monkeypatch.setattr(bridge, "memory_fits", lambda required, device, free=free: required <= free)
        monkeypatch.setattr(bridge, "in_comfyui", lambda: True)
        modes.append(_load_for_decode(handle, (1, 32, 64, 64), "auto", 1024, dcae_decode_memory)[1])
    assert modes == [expected, expected]
    assert _load_for_decode(handle, (1, 32, 64, 64), "off", 1024, dcae_decode_memory)[1] == "off", "as asked"


def test_the_wan_decode_node_gives_the_same_frames_whatever_memory_is_free(monkeypatch, wan_vae):
    """Tiled and whole frames differ: "auto" must take one path for one latent on one machine."""
    handle = bridge.ModelHandle(wan_vae, "vae", family="wan")
    samples = {"samples": torch.randn(1, 16, 2, 6, 6, generator=torch.Generator().manual_seed(5))}
    whole = wan_decode_memory(wan_vae, samples["samples"].shape, False, 32)
    monkeypatch.setattr(bridge, "in_comfyui", lambda: True)
    monkeypatch.setattr(bridge, "total_memory", lambda device: 2 * (whole + handle.patcher.model_size()))
    frames = []
    for free in (0, 2**50):
        monkeypatch.setattr(bridge, "memory_fits", lambda required, device, free=free: required <= free)
        frames.append(WanVAEDecode().decode(handle, samples, "auto", 32, 8)[0])
    assert torch.equal(*frames)
    assert torch.equal(frames[0], decode_wan(wan_vae, samples["samples"], "off")), "whole frames: they fit"
    assert decode_nodes.whole_frames_fit is whole_frames_fit
