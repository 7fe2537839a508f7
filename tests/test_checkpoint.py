"""Safe checkpoint reading: truncated files, pickles needing code, prefixes, folders."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from sana_wan.loaders.checkpoint import load_state_dict, read_safetensors_header, strip_prefix, load_folder_state_dict
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
