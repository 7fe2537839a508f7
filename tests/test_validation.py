"""Queue-time validation (VALIDATE_INPUTS): every bad input reported at once under its own name, the INPUT_TYPES
min / max kept (ComfyUI skips its own for inputs VALIDATE_INPUTS takes), and sizes refused before allocating more
memory than the machine has."""

import re
import sys
import types

import pytest
import torch

from sana_wan import NODE_CLASS_MAPPINGS as NODES
from sana_wan import comfy_bridge as bridge
from sana_wan.samplers.latents import wan_video_bytes

GB = 2**30
SANA, WAN, VACE = NODES["EmptySanaLatent"], NODES["EmptyWanLatentVideo"], NODES["WanVACEConditioning"]


def test_every_bad_size_is_reported_under_its_own_name():
    assert WAN.VALIDATE_INPUTS(500, 250, 10, 1) == (
        "width 500 is not a multiple of 16; use 496 or 512. height 250 is not a multiple of 16; use 240 or 256. "
        "length 10 is not 4n+1 frames; use 9 or 13.")
    assert WAN.VALIDATE_INPUTS(832, 250, 10, 1) == (
        "height 250 is not a multiple of 16; use 240 or 256. length 10 is not 4n+1 frames; use 9 or 13.")
    assert SANA.VALIDATE_INPUTS(1000, 1010, 1, "off") == (
        "width 1000 is not a multiple of 32; use 992 or 1024. height 1010 is not a multiple of 32; use 992 or 1024.")
    assert VACE.VALIDATE_INPUTS(840, 480, 8, 1) == (
        "width 840 is not a multiple of 16; use 832 or 848. length 8 is not 4n+1 frames; use 5 or 9.")
    assert WAN.VALIDATE_INPUTS(832, 480, 81, 1) is True and SANA.VALIDATE_INPUTS(1024, 1024, 1, "1024") is True


def test_other_nodes_report_every_bad_input():
    assert NODES["SanaTextEncoderMemoryOptions"].VALIDATE_INPUTS("gpu", -1.0) == (
        "device must be one of ['default', 'cpu'], got 'gpu'. "
        "max_gpu_weights_gb must be 0 (no cap) or a positive number of GB, got -1.0.")
    assert NODES["WanModelMemoryOptions"].VALIDATE_INPUTS(5000.0) == (
        "max_gpu_weights_gb 5000.0 is above the maximum 1024.0.")
    assert NODES["ApplySanaControlNet"].VALIDATE_INPUTS(-0.5, 2.0) == (
        "start_percent -0.5 is below the minimum 0.0. end_percent 2.0 is above the maximum 1.0.")
    assert "start_percent < end_percent" in NODES["ApplySanaControlNet"].VALIDATE_INPUTS(0.6, 0.2)
    assert NODES["ApplySanaControlNet"].VALIDATE_INPUTS(None, 0.5) is True, "linked: checked at run time"


def test_the_widget_bounds_still_hold():
    """ComfyUI skips min / max for these inputs: the node checks the same INPUT_TYPES bounds itself."""
    assert SANA.VALIDATE_INPUTS(16384, 16384, 1, "off") == (
        "width 16384 is above the maximum 8192. height 16384 is above the maximum 8192.")
    assert WAN.VALIDATE_INPUTS(16384, 16384, 100001, 1) == (
        "width 16384 is above the maximum 4096. height 16384 is above the maximum 4096. "
        "length 100001 is above the maximum 1025.")
    assert WAN.VALIDATE_INPUTS(832, 480, 81, 0) == "batch_size 0 is below the minimum 1."
    assert SANA.VALIDATE_INPUTS(1024, 1024, 65, "8K") == (
        "batch_size 65 is above the maximum 64. resolution_bin must be one of ['off', '512', '1024', '2K', '4K'], "
        "got '8K'.")
    assert VACE.VALIDATE_INPUTS(4112, 480, 1005, 1) == (
        "width 4112 is above the maximum 4096. length 1005 is above the maximum 1001.")
    assert WAN.VALIDATE_INPUTS(None, None, None, None) is True, "linked inputs are checked at run time"
    with pytest.raises(ValueError, match="width 16384 is above the maximum 4096"):
        WAN().generate(16384, 16384, 100001, 1)  # a linked size: refused before torch tries 6.7 TB


def test_a_video_larger_than_the_machine_is_refused_with_what_fits(monkeypatch):
    monkeypatch.setattr(bridge, "total_memory", lambda device: 8 * GB)
    message = WAN.VALIDATE_INPUTS(1920, 1088, 1001, 1)
    assert message.startswith("1920x1088x1001 frames with batch_size 1 needs ~") and "holds 8.0 GB" in message
    fits = int(re.search(r"at most (\d+) frames fit", message).group(1))
    assert (fits - 1) % 4 == 0 and wan_video_bytes(1920, 1088, fits, 1) <= 8 * GB
    assert wan_video_bytes(1920, 1088, fits + 4, 1) > 8 * GB
    assert WAN.VALIDATE_INPUTS(1920, 1088, fits, 1) is True
    with pytest.raises(ValueError, match=f"at most {fits} frames fit"):
        WAN().generate(1920, 1088, 1001, 1)
    assert "at most batch_size 10 fits" in SANA.VALIDATE_INPUTS(8192, 8192, 12, "off")
    assert VACE.VALIDATE_INPUTS(1920, 1088, 1001, 1) == message
    monkeypatch.setattr(bridge, "total_memory", lambda device: GB)
    assert "not even one frame fits; lower width, height or batch_size" in WAN.VALIDATE_INPUTS(4096, 4096, 81, 16)
    monkeypatch.setattr(bridge, "total_memory", lambda device: GB // 2)
    assert "not even one image of this size fits" in SANA.VALIDATE_INPUTS(8192, 8192, 2, "off")


def test_the_memory_check_asks_comfyui_for_the_total_of_the_intermediate_device(monkeypatch):
    mm = types.ModuleType("comfy.model_management")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.get_total_memory = lambda device: 2 * GB if device == torch.device("cpu") else 0
    monkeypatch.setitem(sys.modules, "comfy", types.ModuleType("comfy"))
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    assert "holds 2.0 GB" in WAN.VALIDATE_INPUTS(1280, 720, 201, 1)
    assert WAN.VALIDATE_INPUTS(832, 480, 81, 1) is True
