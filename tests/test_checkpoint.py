"""Safe checkpoint reading: truncated files, pickles needing code, prefixes, folders."""

import json
import os
import pickle
import random
import re
import struct

import pytest
import torch
from safetensors.torch import save_file

from sana_wan.loaders.checkpoint import (
    checkpoint_keys, load_folder_state_dict, load_state_dict, read_safetensors_header, safetensors_shapes,
    strip_prefix,
)
from sana_wan.loaders.detect import detect_family


def test_safetensors_round_trip(tmp_path):
    sd = {"a.weight": torch.randn(3, 4), "b": torch.arange(5)}
    path = str(tmp_path / "m.safetensors")
    save_file(sd, path)
    loaded = load_state_dict(path)
    assert set(loaded) == set(sd) and torch.equal(loaded["a.weight"], sd["a.weight"])


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    path = str(tmp_path / "m.safetensors")
    save_file({"a": torch.randn(64, 64)}, path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_state_dict(path)
    open(path, "wb").write(b"\x05")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_safetensors_header(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_needing_code_execution_is_refused(tmp_path):
    legacy = str(tmp_path / "evil_legacy.pth")
    with open(legacy, "wb") as f:
        pickle.dump({"state_dict": {"w": _Evil()}}, f)
    zipped = str(tmp_path / "evil.pth")
    torch.save({"state_dict": {"w": _Evil()}}, zipped)
    for path in (legacy, zipped):
        with pytest.raises(ValueError, match="code execution"):
            load_state_dict(path)


def test_pth_state_dict_is_unwrapped(tmp_path):
    path = str(tmp_path / "m.pth")
    torch.save({"state_dict": {"w": torch.ones(2)}, "step": 10}, path)
    assert set(load_state_dict(path)) == {"w"}


def test_strip_prefix_keeps_only_the_prefixed_model():
    sd = {"model.diffusion_model.a": 1, "model.diffusion_model.b": 2, "first_stage_model.c": 3}
    assert strip_prefix(sd, ("model.diffusion_model.",)) == {"a": 1, "b": 2}
    assert strip_prefix({"a": 1}, ("model.diffusion_model.",)) == {"a": 1}


def test_sharded_folder(tmp_path):
    import json
    save_file({"a": torch.ones(1)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.ones(1)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    json.dump({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}},
              open(tmp_path / "model.safetensors.index.json", "w"))
    assert set(load_folder_state_dict(str(tmp_path), "model")) == {"a", "b"}
    with pytest.raises(ValueError, match="no diffusion_pytorch_model"):
        load_folder_state_dict(str(tmp_path), "diffusion_pytorch_model")


@pytest.mark.parametrize("manifest,family", [
    ("sana_600m_original.json", "Sana transformer (original layout)"),
    ("sana_600m_diffusers.json", "Sana transformer (diffusers layout)"),
    ("sana_controlnet_1600m_diffusers.json", "Sana ControlNet"),
    ("wan21_t2v_1_3b_original.json", "Wan transformer (original layout)"),
    ("wan21_t2v_1_3b_diffusers.json", "Wan transformer (diffusers layout)"),
    ("wan21_vae_original.json", "Wan VAE"),
    ("wan21_vae_diffusers.json", "Wan VAE"),
    ("dcae_f32c32_diffusers.json", "DC-AE VAE"),
    ("gemma2_2b_it.json", "Gemma-2 text encoder"),
    ("umt5_xxl_encoder_hf.json", "UMT5 text encoder"),
    ("umt5_xxl_encoder_wan_original.json", "UMT5 text encoder"),
])
def test_detect_family_on_real_layouts(manifests_dir, manifest, family):
    import json
    keys = json.load(open(os.path.join(manifests_dir, manifest)))["tensors"]
    assert detect_family(keys) == family


def _raw_safetensors(path, header, data: bytes = b"") -> str:
    """A file with this header (any JSON value, or raw bytes) before `data`, laid out as a safetensors writer does."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


def _tensor(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


MALFORMED_HEADERS = [
    ([1, 2], b"", "JSON list, not an object"),
    ("text", b"", "JSON str, not an object"),
    ({"w": [1, 2]}, bytes(8), "tensor 'w' is described by a JSON list"),
    ({"w": {"dtype": "F32", "shape": [2]}}, bytes(8), "tensor 'w' has no data_offsets"),
    ({"w": {"data_offsets": [0, 8]}}, bytes(8), "tensor 'w' has no dtype / shape"),
    ({"w": _tensor(dtype="F33")}, bytes(8), "unknown dtype 'F33'"),
    ({"w": _tensor(dtype=5)}, bytes(8), "unknown dtype 5"),
    ({"w": _tensor(shape=(2, -1))}, bytes(8), r"shape \[2, -1\]"),
    ({"w": _tensor(shape=(2.0,))}, bytes(8), r"shape \[2.0\]"),
    ({"w": {**_tensor(), "shape": 2}}, bytes(8), "shape 2, not a list"),
    ({"w": _tensor(offsets=(-8, 0))}, bytes(8), r"data_offsets \[-8, 0\]"),
    ({"w": _tensor(offsets=(8, 0))}, bytes(8), r"data_offsets \[8, 0\]"),
    ({"w": _tensor(offsets=(0, 8, 16))}, bytes(16), "data_offsets"),
    ({"w": _tensor(offsets=(0, 2**70))}, bytes(8), r"\(8 bytes\) but its data_offsets"),
    ({"w": _tensor(shape=(3,))}, bytes(8), r"F32 \[3\] \(12 bytes\) but its data_offsets \[0, 8\] hold 8 bytes"),
    ({"w": _tensor(offsets=(8, 16))}, bytes(16), "8 unused bytes before tensor 'w'"),
    ({"a": _tensor(offsets=(0, 8)), "b": _tensor(shape=(1,), offsets=(4, 8))}, bytes(8), "'a' and 'b' overlap"),
    ({"w": _tensor(offsets=(0, 8))}, bytes(4), "truncated: its tensors need"),
    ({"w": _tensor(offsets=(2**40, 2**40 + 8))}, bytes(8), "unused bytes"),
    ({"w": _tensor(shape=(2**68,), offsets=(0, 2**70))}, bytes(8), "truncated: its tensors need"),
    ({"w": _tensor()}, bytes(12), "4 bytes after its last tensor"),
    ({"__metadata__": {"format": 1}}, b"", "__metadata__ is not an object of strings"),
    ({"__metadata__": [1]}, b"", "__metadata__ is not an object of strings"),
    (b"[" * 100_000 + b"]" * 100_000, b"", "RecursionError"),
    (b'{"w": "\xff\xfe"}', b"", "UnicodeDecodeError"),
    ('{"w": 1}'.encode("utf-16"), b"", "corrupt safetensors header"),
    (b'{"w": ', b"", "JSONDecodeError"),
]


@pytest.mark.parametrize("header,data,message", MALFORMED_HEADERS, ids=[case[2] for case in MALFORMED_HEADERS])
def test_malformed_safetensors_headers_are_clear_errors(tmp_path, header, data, message):
    """Every malformed file is a ValueError naming the file and what is wrong, from the header reader, the shape
    reader and the full loader alike (never an AttributeError / KeyError / RecursionError from the parser)."""
    path = _raw_safetensors(tmp_path / "bad.safetensors", header, data)
    for read in (read_safetensors_header, safetensors_shapes, load_state_dict):
        with pytest.raises(ValueError, match="'bad.safetensors'") as error:
            read(path)
        assert re.search(message, str(error.value)), str(error.value)


def test_the_header_checks_accept_what_safetensors_writes(tmp_path):
    """Zero-size tensors, every dtype of the table, metadata and any key order pass, and load."""
    tensors = {"empty": torch.zeros(0, 3), "f8": torch.ones(4).to(torch.float8_e4m3fn),
               "u16": torch.ones(3, dtype=torch.uint16), "b": torch.tensor([True, False]),
               "z": torch.randn(2, 5, dtype=torch.bfloat16)}
    path = str(tmp_path / "good.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    assert safetensors_shapes(path) == {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    assert all(torch.equal(load_state_dict(path)[k], v) for k, v in tensors.items())


def test_random_corruption_of_a_header_is_a_clear_error_or_a_good_file(tmp_path):
    """Random bytes of a real header changed (seeded): the readers either load the file or raise ValueError."""
    path = str(tmp_path / "m.safetensors")
    save_file({"a.weight": torch.randn(3, 4), "a.bias": torch.randn(4), "steps": torch.arange(3)}, path,
              metadata={"format": "pt"})
    good = open(path, "rb").read()
    header_len = struct.unpack("<Q", good[:8])[0]
    rng = random.Random(0)
    outcomes = set()
    for _ in range(400):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(0, 8 + header_len)] = rng.randrange(256)
        open(path, "wb").write(bytes(data))
        for read in (read_safetensors_header, load_state_dict):
            try:
                read(path)
                outcomes.add("loaded")
            except ValueError:
                outcomes.add("refused")
    assert outcomes == {"loaded", "refused"}


def _quant_conf(conf) -> torch.Tensor:
    return torch.tensor(list(json.dumps(conf).encode()), dtype=torch.uint8)


def test_comfyui_quantised_layer_files_read_as_scaled_fp8_in_full_and_by_header(tmp_path):
    path = str(tmp_path / "q.safetensors")
    weight = torch.randn(4, 4).to(torch.float8_e5m2)
    save_file({"a.weight": weight, "a.weight_scale": torch.tensor(0.5), "a.input_scale": torch.tensor(2.0),
               "a.comfy_quant": _quant_conf({"format": "float8_e5m2"}), "b.weight": torch.ones(3)}, path)
    state_dict = load_state_dict(path)
    assert set(state_dict) == {"a.weight", "a.scale_weight", "a.scale_input", "b.weight", "scaled_fp8"}
    assert torch.equal(state_dict["a.weight"].float(), weight.float()) and state_dict["a.scale_weight"] == 0.5
    assert state_dict["scaled_fp8"].dtype == torch.float8_e5m2
    keys = checkpoint_keys(path)
    assert {k: (tuple(v.shape), v.dtype) for k, v in state_dict.items()} == keys


@pytest.mark.parametrize("metadata, named", [
    ({"_quantization_metadata": json.dumps({"layers": {"a": {"format": "mxfp8"}}})}, "mxfp8"),
    ({"_quantization_metadata": "{not json"}, "unreadable ComfyUI quantisation metadata"),
    ({"_quantization_metadata": json.dumps({"layers": {"a": {}}})}, "unreadable ComfyUI quantisation metadata"),
])
def test_quantised_formats_the_pack_cannot_compute_or_read_are_refused_by_name(tmp_path, metadata, named):
    path = str(tmp_path / "q.safetensors")
    save_file({"a.weight": torch.zeros(2, 2, dtype=torch.uint8), "a.weight_scale": torch.tensor(1.0)}, path,
              metadata=metadata)
    for read in (load_state_dict, checkpoint_keys):
        with pytest.raises(ValueError, match=named):
            read(path)
