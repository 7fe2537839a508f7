"""GGUF files: quantized weights stay quantized in memory and compute exactly what gguf-py's reference
dequantisation of the same file gives.

Each model is written as the real GGUF files are (tests/gguf_files.py: city96's Wan and llama.cpp's UMT5 names,
Sana in original and diffusers names) in Q8_0 (gguf-py's own quantizer), Q5_K and Q4_K. The reference is
independent of the loader's GGUF code: every tensor of the file dequantized by `gguf.quants.dequantize` (numpy),
written as a plain safetensors file and loaded by the safetensors path of the same loader.
"""

import os
import sys
import types

import gguf
import numpy as np
import pytest
import torch
from gguf_files import (
    K_QUANT_LEVELS, T, quantize_k, reference_state_dict, umt5_to_llama_cpp, write_gguf, write_sana_gguf,
    write_umt5_gguf, write_wan_gguf,
)
from safetensors.torch import save_file
from tiny_sana import tiny_sana_transformer
from tiny_umt5 import tiny_umt5, tokenizer_from_spm, train_spm_bytes
from tiny_wan import tiny_wan_transformer

import sana_wan
from sana_wan import comfy_bridge as bridge
from sana_wan.loaders.gguf import GGUFEmbedding, GGUFLinear, is_quantized, quantized_bytes
from sana_wan.loaders.sana_transformer import load_sana_transformer
from sana_wan.loaders.umt5 import load_umt5_encoder
from sana_wan.loaders.wan_transformer import load_wan_transformer

NODES = sana_wan.NODE_CLASS_MAPPINGS
QTYPES = [T.Q8_0, T.Q5_K, T.Q4_K]
# Widths whose rows are whole 256-value K-quant super-blocks, so every block matrix can be K-quantized.
WAN_SIZES = dict(num_attention_heads=2, ffn_dim=512, text_dim=256)
SANA_SIZES = dict(num_attention_heads=8, num_cross_attention_heads=4, cross_attention_dim=256, caption_channels=256,
                  mlp_ratio=2.0)
UMT5_SIZES = dict(d_model=256, d_ff=512, num_heads=4, d_kv=64)


@pytest.fixture(scope="module")
def wan():
    return tiny_wan_transformer(seed=3, **WAN_SIZES)


@pytest.fixture(scope="module")
def umt5(tmp_path_factory):
    spm = train_spm_bytes()
    folder = tmp_path_factory.mktemp("umt5")
    (folder / "spiece.model").write_bytes(spm)  # the tokenizer beside the GGUF, as the original Wan release has it
    return {"model": tiny_umt5(len(tokenizer_from_spm(spm)), seed=4, **UMT5_SIZES), "folder": folder, "spm": spm}


def _gguf_tensors(path):
    reader = gguf.GGUFReader(path)
    return {t.name: t for t in reader.tensors}


def _quantized_layers(model):
    return {name: module for name, module in model.named_modules() if hasattr(module, "dequantized_weight")}


def _check_against_reference(model, reference, path, dropped=()):
    """The file's quantized tensors are held as they are in the file (all their bytes, none dequantized at load)
    by dequantising layers, and every weight (dequantized or plain) equals the reference model's.

    `dropped`: file tensors the loader leaves out (not model weights)."""
    file_quantized = [t for t in _gguf_tensors(path).values()
                      if t.tensor_type not in (T.F32, T.F16, T.BF16) and t.name not in dropped]
    layers = _quantized_layers(model)
    assert file_quantized and quantized_bytes(model) == sum(int(t.n_bytes) for t in file_quantized)
    reference_weights = dict(reference.named_parameters())
    for name, module in layers.items():
        assert is_quantized(module.weight) and module.weight.dtype == torch.int8
        assert torch.equal(module.dequantized_weight(), reference_weights.pop(name + ".weight")), name
    ours = dict(model.named_parameters())
    for name, weight in reference_weights.items():
        assert torch.equal(ours[name], weight), name


def _wan_forward(model, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 16, 2, 8, 8, generator=generator).to(dtype)
    text = torch.randn(1, 12, WAN_SIZES["text_dim"], generator=generator).to(dtype)
    with torch.inference_mode():
        return model(latent, torch.tensor([700.0]), text, return_dict=False)[0]


def _reference_file(path, folder, rename=lambda name: name, extra=None):
    """The GGUF file's tensors dequantized by gguf-py, as a plain safetensors file (names mapped by `rename`)."""
    tensors = {rename(k): v.contiguous() for k, v in reference_state_dict(path).items()}
    reference = os.path.join(folder, os.path.basename(path).replace(".gguf", "_reference.safetensors"))
    save_file({**tensors, **(extra or {})}, reference)
    return reference


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
def test_wan_gguf_computes_the_reference_dequantisation(wan, tmp_path, qtype):
    path = write_wan_gguf(wan, str(tmp_path / f"wan2.1-t2v-tiny-{qtype.name}.gguf"), qtype)
    model, variant = load_wan_transformer(path, torch.float32)
    reference, _ = load_wan_transformer(_reference_file(path, tmp_path), torch.float32)
    _check_against_reference(model, reference, path)
    assert all(isinstance(m, GGUFLinear) for m in _quantized_layers(model).values())
    assert torch.equal(_wan_forward(model), _wan_forward(reference))
    assert variant.name.startswith("Wan2.1-like T2V")
    # the quantization is real: the output moved, by a small fraction of its size
    difference = (_wan_forward(model) - _wan_forward(wan)).abs().max()
    assert 0 < difference < 0.1 * _wan_forward(wan).abs().max()


def test_wan_gguf_memory_is_the_file_size_and_stays_quantized_when_moved(wan, tmp_path):
    path = write_wan_gguf(wan, str(tmp_path / "wan-Q4_K.gguf"), T.Q4_K)
    model, _ = load_wan_transformer(path, torch.bfloat16)
    held = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # about the file: its unquantized tensors are bf16 as the model's, but for the time embedder, which diffusers
    # keeps in float32 (8 % of this tiny model), and the F32 biases and norms, held in bf16
    assert held < 1.1 * os.path.getsize(path)
    # the blocks (where the file quantizes) in about 4.5 bits a weight (Q4_K: 144 bytes per 256 weights)
    in_blocks = sum(t.numel() * t.element_size() for t in model.blocks.state_dict().values())
    assert in_blocks < 0.3 * sum(p.numel() * 2 for p in wan.blocks.parameters())
    expected = _wan_forward(model, torch.bfloat16)
    handle = bridge.ModelHandle(model, "diffusion")
    # standalone: the patcher's .to(load device), as ComfyUI's full load
    assert torch.equal(_wan_forward(handle.load(), torch.bfloat16), expected)
    model.to("meta")  # a real move of every tensor (the only other device here), as ComfyUI's patcher does
    layers = _quantized_layers(model)
    assert len(layers) == 20 and all(layer.weight.is_meta for layer in layers.values())
    for name, layer in layers.items():
        assert is_quantized(layer.weight) and layer.weight.quant_type == T.Q4_K, name
        assert layer.weight.dtype == torch.int8 and layer.compute_dtype == torch.bfloat16, name


@pytest.mark.parametrize("original, qtype, sizes", [
    (True, T.Q4_K, SANA_SIZES), (False, T.Q8_0, SANA_SIZES),
    (True, T.Q4_K, {}),  # 64 wide: no K-quant rows, llama.cpp's Q5_0 instead
], ids=["original-Q4_K", "diffusers-Q8_0", "original-Q5_0-fallback"])
def test_sana_gguf_computes_the_reference_dequantisation(tmp_path, original, qtype, sizes):
    source = tiny_sana_transformer("qk_norm", seed=5, **sizes)
    path = write_sana_gguf(source, str(tmp_path / f"sana-{qtype.name}.gguf"), qtype, original=original)
    model, variant = load_sana_transformer(path, torch.float32)
    reference, _ = load_sana_transformer(_reference_file(path, tmp_path), torch.float32)
    _check_against_reference(model, reference, path, dropped=("y_embedder.y_embedding",))
    types = {layer.weight.quant_type for layer in _quantized_layers(model).values()}
    assert types == ({qtype} if sizes else {T.Q4_K, T.Q5_0})  # narrow: only the 256-wide timestep input in Q4_K
    # the 1x1 convolutions of the feed-forward are quantized too (stored as matrices with city96's orig_shape)
    assert {type(m).__name__ for m in _quantized_layers(model).values()} == {"GGUFLinear", "GGUFConv2d"}
    generator = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 8, 8, 8, generator=generator)
    text = torch.randn(1, 10, source.config.caption_channels, generator=generator)
    with torch.inference_mode():
        ours, expected = (m(latent, text, torch.tensor([500.0]), return_dict=False)[0] for m in (model, reference))
    assert torch.equal(ours, expected)
    assert "QK-norm" in variant.name


@pytest.mark.parametrize("qtype", [T.Q5_K], ids=lambda t: t.name)
def test_umt5_gguf_computes_the_reference_dequantisation(umt5, qtype):
    folder = umt5["folder"]
    path = write_umt5_gguf(umt5["model"], str(folder / f"umt5-xxl-encoder-{qtype.name}.gguf"), qtype)
    hf_names = {umt5_to_llama_cpp(k): k for k in umt5["model"].state_dict() if k != "encoder.embed_tokens.weight"}
    spiece = {"spiece_model": torch.frombuffer(bytearray(umt5["spm"]), dtype=torch.uint8)}
    reference_path = _reference_file(path, folder, hf_names.__getitem__, spiece)
    # fp16: transformers keeps the FFN output `wo` in float32; its quantized weight must not make the activations
    # be cast to the weight's dtype (the int8 storage of the blocks is what avoids that)
    for dtype in (torch.float32, torch.float16):
        model, tokenizer = load_umt5_encoder(path, dtype)
        reference, _ = load_umt5_encoder(reference_path, dtype)
        _check_against_reference(model, reference, path)
        assert isinstance(model.shared, GGUFEmbedding) and model.encoder.embed_tokens is model.shared
        tokens = tokenizer(["a cat walks on the grass", "一只小狗"], return_tensors="pt", padding=True)
        with torch.inference_mode():
            ours, expected = (m(**tokens).last_hidden_state for m in (model, reference))
        assert ours.dtype == expected.dtype and torch.equal(ours, expected), dtype


def test_umt5_gguf_needs_its_tokenizer_beside_it(umt5, tmp_path):
    path = write_umt5_gguf(umt5["model"], str(tmp_path / "umt5-Q8_0.gguf"), T.Q8_0)
    with pytest.raises(ValueError, match="No umT5 tokenizer found.*spiece.model"):
        load_umt5_encoder(path)


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q5_K], ids=lambda t: t.name)
def test_k_quant_writer_is_within_half_a_step_of_gguf_reference(qtype):
    """The test-only K-quantizer, checked by gguf-py's reference dequantiser: every value within half of its
    sub-block's step, and the step no larger than the sub-block's range needs (plus 6-bit scale rounding)."""
    rows = np.random.default_rng(0).standard_normal((6, 512)).astype(np.float32)
    rows[1], rows[2], rows[3], rows[4], rows[5, :256] = abs(rows[1]), -abs(rows[2]), 0, 0.7, rows[5, :256] * 1e-4
    blocks = quantize_k(rows, qtype)
    assert blocks.shape == (6, 2 * gguf.GGML_QUANT_SIZES[qtype][1])
    values = gguf.quants.dequantize(blocks, qtype)
    flat = blocks.reshape(-1, gguf.GGML_QUANT_SIZES[qtype][1])
    d, dmin = (flat[:, i:i + 2].copy().view(np.float16).astype(np.float32) for i in (0, 2))
    scales, _ = gguf.quants.Q4_K.get_scale_min(flat[:, 4:16])
    step = (d * scales).reshape(6, -1, 1)  # [row, sub-block, 1]
    d, dmin = (np.repeat(x, 8, axis=1).reshape(6, -1, 1) for x in (d, dmin))
    error = abs(values - rows).reshape(6, -1, 32)
    sub = rows.reshape(6, -1, 32)
    value_range = sub.max(axis=2, keepdims=True) - np.minimum(sub.min(axis=2, keepdims=True), 0)
    assert (error <= step / 2 + 1e-6 * abs(sub)).all()
    # the range, widened by rounding the min up to a multiple of dmin, split in levels; the 6-bit scale adds < d
    assert (step <= (value_range + dmin) / K_QUANT_LEVELS[qtype] * 1.0001 + d).all()
    assert error[3].max() == 0 and error[4].max() < 1e-3


def test_unsupported_quantization_types_are_named(wan, tmp_path):
    path = str(tmp_path / "wan-iq2.gguf")
    tensors = {"blocks.0.self_attn.q.weight": (np.zeros((4, 256), np.float32), T.Q8_0)}
    write_gguf(path, tensors, "wan")
    iq2 = str(tmp_path / "wan-IQ2_XXS.gguf")
    writer = gguf.GGUFWriter(iq2, "wan")
    writer.add_tensor("blocks.0.self_attn.q.weight", np.zeros((4, 66), np.uint8), raw_dtype=T.IQ2_XXS)
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        write()
    writer.close()
    with pytest.raises(ValueError, match="'blocks.0.self_attn.q.weight' is stored as IQ2_XXS.*Supported: .*Q4_K"):
        load_wan_transformer(iq2)
    # a type id gguf does not know (a newer llama.cpp type): the id in the tensor info patched to 99
    data = bytearray(open(path, "rb").read())
    name = b"blocks.0.self_attn.q.weight"
    type_at = data.index(name) + len(name) + 4 + 2 * 8  # after the name: n_dims (u32) and two dims (u64)
    assert int.from_bytes(data[type_at:type_at + 4], "little") == T.Q8_0
    data[type_at:type_at + 4] = (99).to_bytes(4, "little")
    unknown = tmp_path / "wan-unknown.gguf"
    unknown.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="'blocks.0.self_attn.q.weight' has GGML type id 99"):
        load_wan_transformer(str(unknown))
    truncated = tmp_path / "wan-truncated.gguf"
    truncated.write_bytes(open(write_wan_gguf(wan, path, T.Q8_0), "rb").read()[:100_000])
    with pytest.raises(ValueError, match="truncated"):
        load_wan_transformer(str(truncated))


def test_a_gguf_of_another_family_is_refused_with_what_it_is(wan, umt5, tmp_path):
    wan_path = write_wan_gguf(wan, str(tmp_path / "wan-Q8_0.gguf"), T.Q8_0)
    umt5_path = write_umt5_gguf(umt5["model"], str(tmp_path / "umt5-Q8_0.gguf"), T.Q8_0)
    with pytest.raises(ValueError, match="is a Wan transformer \\(original layout\\), not a Sana transformer"):
        load_sana_transformer(wan_path)
    with pytest.raises(ValueError, match="is a UMT5 text encoder, not a Wan transformer"):
        load_wan_transformer(umt5_path)
    with pytest.raises(ValueError, match="detected as: Wan transformer"):
        load_umt5_encoder(wan_path)


def test_wan_sampling_through_the_nodes_equals_the_reference_files(wan, umt5, tmp_path):
    folder = umt5["folder"]
    files = {"transformer": write_wan_gguf(wan, str(tmp_path / "wan-Q4_K.gguf"), T.Q4_K),
             "text_encoder": write_umt5_gguf(umt5["model"], str(folder / "umt5-Q8_0.gguf"), T.Q8_0)}
    hf_names = {umt5_to_llama_cpp(k): k for k in umt5["model"].state_dict() if k != "encoder.embed_tokens.weight"}
    spiece = {"spiece_model": torch.frombuffer(bytearray(umt5["spm"]), dtype=torch.uint8)}
    references = {"transformer": _reference_file(files["transformer"], tmp_path),
                  "text_encoder": _reference_file(files["text_encoder"], tmp_path, hf_names.__getitem__, spiece)}
    results = []
    for paths in (files, references):
        (model,) = NODES["WanTransformerLoader"]().load(paths["transformer"], "fp32")
        (encoder,) = NODES["WanTextEncoderLoader"]().load(paths["text_encoder"], "fp32")
        positive, negative = NODES["WanTextEncode"]().encode(encoder, "a fox in the snow", "blurry", False)
        (latent,) = NODES["EmptyWanLatentVideo"]().generate(32, 32, 5, 1)
        (samples,) = NODES["WanSampler"]().sample(model, positive, negative, latent, 7, 2, 5.0, 0.0, "flow_unipc",
                                                  "default", 1.0)
        results.append(samples["samples"])
    assert torch.equal(results[0], results[1]) and results[0].std() > 0.1


def test_gguf_files_are_listed_for_the_transformer_and_text_encoder_loaders(monkeypatch, tmp_path):
    """With ComfyUI present: its own list (its extension sets, left unchanged) plus the .gguf files under the same
    folders, for the transformer and text-encoder folders only. Stand-ins for the folder_paths functions used."""
    for folder in ("unet", "diffusion_models", "vae"):
        (tmp_path / folder / "sub").mkdir(parents=True)
        (tmp_path / folder / "sub" / "model-Q4_K.gguf").write_bytes(b"")
    roots = {"diffusion_models": [tmp_path / "unet", tmp_path / "diffusion_models"], "vae": [tmp_path / "vae"]}

    def recursive_search(root, excluded_dir_names):
        return [os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files], {}

    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_filename_list = lambda name: ["model.safetensors"]
    folder_paths.get_folder_paths = lambda name: [str(root) for root in roots[name]]
    folder_paths.recursive_search = recursive_search
    folder_paths.filter_files_extensions = lambda files, extensions: [
        f for f in files if os.path.splitext(f)[1] in extensions]
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    assert bridge.model_files("diffusion_models") == ["model.safetensors", os.path.join("sub", "model-Q4_K.gguf")]
    assert bridge.model_files("vae") == ["model.safetensors"]
