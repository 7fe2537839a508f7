"""The bridge's contract with ComfyUI, checked against stand-in `comfy` modules that record every call."""

import sys
import types

import pytest
import torch
from PIL import Image

from sana_wan import comfy_bridge as bridge


class Interrupted(Exception):
    pass


@pytest.fixture
def fake_comfy(monkeypatch, tmp_path):
    calls = {"load": [], "progress": [], "interrupt_checks": 0}
    state = {"interrupt_at": None}

    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = mm.text_encoder_device = mm.text_encoder_offload_device = mm.get_torch_device
    mm.vae_device = mm.vae_offload_device = mm.intermediate_device = mm.get_torch_device
    mm.load_models_gpu = lambda models, **kw: calls["load"].append((models, kw))
    mm.get_free_memory = lambda device: 1000

    def check():
        calls["interrupt_checks"] += 1
        if state["interrupt_at"] == calls["interrupt_checks"]:
            raise Interrupted()

    mm.throw_exception_if_processing_interrupted = check

    mp = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device
            model.device = offload_device  # what the real one does: fails on diffusers models

        def clone(self):  # as the real one: a patcher of the same class
            return self.__class__(self.model, self.load_device, self.offload_device)

    mp.ModelPatcher = ModelPatcher

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls["progress"].append((value, total, preview))

    utils.ProgressBar = ProgressBar

    cli = types.ModuleType("comfy.cli_args")
    cli.LatentPreviewMethod = types.SimpleNamespace(NoPreviews="none")
    cli.args = types.SimpleNamespace(preview_method="latent2rgb", preview_size=256)

    folder_paths = types.ModuleType("folder_paths")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "a.safetensors").write_bytes(b"")
    folder_paths.get_folder_paths = lambda name: [str(tmp_path / name)]
    folder_paths.get_full_path = lambda name, f: str(tmp_path / name / f) if (tmp_path / name / f).exists() else None
    folder_paths.get_filename_list = lambda name: ["a.safetensors"]

    for name, module in {"comfy": types.ModuleType("comfy"), "comfy.model_management": mm,
                         "comfy.model_patcher": mp, "comfy.utils": utils, "comfy.cli_args": cli,
                         "folder_paths": folder_paths}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls, state


def test_one_patcher_over_a_plain_holder_loaded_through_the_vram_manager(fake_comfy):
    calls, _ = fake_comfy
    module = torch.nn.Linear(2, 2)
    handle = bridge.ModelHandle(module, "diffusion", family="sana")
    patcher = handle.patcher
    assert handle.load(memory_required=1234) is module
    assert handle.load() is module
    assert [c[0] for c in calls["load"]] == [[patcher], [patcher]], "the same patcher every time"
    # No force_full_load: ComfyUI loads partially when memory is short, as it does its own models.
    assert calls["load"][0][1] == {"memory_required": 1234}
    assert patcher.model is not module and patcher.model.module is module


def test_clone_shares_the_weights_with_a_new_patcher_and_leaves_the_original_as_it_was(fake_comfy):
    module = torch.nn.Linear(2, 2)
    handle = bridge.ModelHandle(module, "diffusion", family="sana", variant="a")
    clone = handle.clone(variant="b")
    assert clone.patcher is not handle.patcher and clone.module is module
    assert clone.info == {"family": "sana", "variant": "b"} and handle.info["variant"] == "a"


def test_standalone_clone_shares_the_weights(monkeypatch):
    monkeypatch.setattr(bridge, "_comfy", lambda name: None)
    handle = bridge.ModelHandle(torch.nn.Linear(2, 2), "vae")
    clone = handle.clone(tiled=True)
    assert clone.patcher is not handle.patcher and clone.module is handle.module and "tiled" not in handle.info


def test_step_callback_reports_progress_checks_interrupt_and_previews(fake_comfy):
    calls, state = fake_comfy
    callback = bridge.step_callback(3, preview=lambda x0: Image.new("RGB", (4, 4)))
    for step in (1, 2, 3):
        callback(step, 3, torch.zeros(1, 4, 2, 2))
    assert [(v, t) for v, t, _ in calls["progress"]] == [(1, 3), (2, 3), (3, 3)]
    assert all(p[0] == "JPEG" and p[2] == 256 for _, _, p in calls["progress"])
    assert calls["interrupt_checks"] == 3
    state["interrupt_at"] = 4
    with pytest.raises(Interrupted):
        bridge.step_callback(3)(1, 3, torch.zeros(1))


def test_sampling_stops_on_interrupt_and_the_model_runs_again(fake_comfy):
    from test_sana_sampler import _conds  # the sampler test's tiny conditioning
    from tiny_sana import tiny_sana_transformer

    from sana_wan.samplers.conditioning import make_conditioning
    from sana_wan.samplers.sana import sample_sana

    calls, state = fake_comfy
    transformer = tiny_sana_transformer(in_channels=32, out_channels=32, caption_channels=48)
    pos, pos_mask, neg, neg_mask = _conds()
    args = ({"samples": torch.zeros(1, 32, 2, 2)}, make_conditioning(pos, pos_mask), make_conditioning(neg, neg_mask),
            3, 4, 2.0, 3.0, "flow_euler")
    state["interrupt_at"] = 2
    with torch.inference_mode(), pytest.raises(Interrupted):
        sample_sana(transformer, *args, callback=bridge.step_callback(4))
    with torch.inference_mode():
        first = sample_sana(transformer, *args, callback=bridge.step_callback(4))
        second = sample_sana(transformer, *args)
    assert torch.equal(first, second)


def test_model_names_outside_the_model_folders_are_refused(fake_comfy):
    assert bridge.resolve_model_path("vae", "a.safetensors").endswith("a.safetensors")
    for name in ("../secrets.safetensors", "/etc/passwd", "sub/../../x"):
        with pytest.raises(ValueError, match="not inside"):
            bridge.resolve_model_path("vae", name)
    with pytest.raises(ValueError, match="was not found"):
        bridge.resolve_model_path("vae", "missing.safetensors")


def test_memory_fits_asks_comfyui_for_free_memory(fake_comfy):
    assert bridge.memory_fits(1000, torch.device("cpu")) and not bridge.memory_fits(1001, torch.device("cpu"))


def test_memory_fits_is_false_without_comfyui():
    assert not bridge.memory_fits(1, torch.device("cpu"))


@pytest.mark.parametrize("total, expected", [(10**12, "off"), (10**9, "on")])
def test_auto_decode_tiles_when_the_whole_image_would_take_over_half_the_device(fake_comfy, monkeypatch, total,
                                                                                expected):
    from tiny_dcae import tiny_dcae

    from sana_wan.nodes.decode import _load_for_decode
    from sana_wan.vae.dcae import dcae_decode_memory

    calls, _ = fake_comfy
    mm = sys.modules["comfy.model_management"]
    monkeypatch.setattr(mm, "get_total_memory", lambda device: total, raising=False)
    monkeypatch.setattr(mm, "get_free_memory", lambda device: 0)  # what happens to be free plays no part
    vae = tiny_dcae()
    handle = bridge.ModelHandle(vae, "vae")
    handle.patcher.model_size = lambda: 10**6  # ComfyUI's ModelPatcher has it; the stand-in here does not
    model, mode = _load_for_decode(handle, (1, 32, 64, 64), "auto", 1024, dcae_decode_memory)
    assert model is vae and mode == expected
    whole = dcae_decode_memory(vae, (1, 32, 64, 64), False, 1024)  # 13 GB
    assert dcae_decode_memory(vae, (1, 32, 64, 64), True, 1024) == whole // 4, "a 1024 px tile is 32x32 of 64x64"
    required = whole if expected == "off" else whole // 4
    assert calls["load"][0][1]["memory_required"] == required, "ComfyUI makes room for the path taken"
