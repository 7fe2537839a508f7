"""Low-VRAM modes: weight storage dtypes (fp8 / bf16, cast up per layer), partial loading (layers cast on call from
the offload device), text encoders on the CPU, and the memory nodes.

CPU only: the meta device stands in for a GPU. A partially loaded model runs with its inputs on meta and its
offloaded layers on the CPU, and every torch call is checked for tensors on both (what would fail on a GPU).
"""

import math
import sys

import pytest
import torch
from safetensors.torch import save_file
from test_bridge import fake_comfy  # noqa: F401 (the stand-in ComfyUI modules, a fixture)
from tiny_gemma import tiny_gemma2
from tiny_gemma import tokenizer_from_spm as gemma_tokenizer
from tiny_gemma import train_spm_bytes as gemma_spm
from tiny_gemma import write_gemma_layouts
from tiny_sana import tiny_sana_transformer
from tiny_umt5 import tiny_umt5, tokenizer_from_spm, train_spm_bytes, write_umt5_layouts
from tiny_wan import tiny_wan_transformer, write_wan_layouts
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

import sana_wan
from sana_wan import comfy_bridge as bridge
from sana_wan.loaders.cast_layers import (
    CastOnCall, direct_bytes, execution_device, place_within, set_execution_device, to_storage,
)
from sana_wan.loaders.gemma import load_gemma_text_encoder
from sana_wan.loaders.storage import stored_bytes, stored_layers
from sana_wan.loaders.umt5 import load_umt5_encoder
from sana_wan.loaders.wan_transformer import load_wan_transformer
from sana_wan.samplers.conditioning import make_conditioning
from sana_wan.samplers.sana import sana_velocity
from sana_wan.samplers.wan import sample_wan, wan_velocity
from sana_wan.text.sana_prompt import encode_sana_prompt
from sana_wan.text.wan_prompt import encode_wan_prompt

E4M3, E5M2, BF16 = torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16
# Largest |output - full-precision output| / max |full-precision output| of one forward with these weights.
TOLERANCE = {E4M3: 0.05, E5M2: 0.1, BF16: 0.01}
META, CPU = torch.device("meta"), torch.device("cpu")
NODES = sana_wan.NODE_CLASS_MAPPINGS


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def wan_files(tmp_path_factory):
    source = tiny_wan_transformer("t2v", seed=0)
    return source, write_wan_layouts(source, str(tmp_path_factory.mktemp("wan")))


@pytest.fixture(scope="module")
def umt5_files(tmp_path_factory):
    spm = train_spm_bytes()
    tokenizer = tokenizer_from_spm(spm)
    paths = write_umt5_layouts(tiny_umt5(len(tokenizer), seed=1), tokenizer, spm, str(tmp_path_factory.mktemp("t5")))
    return tokenizer, paths


@pytest.fixture(scope="module")
def gemma_files(tmp_path_factory):
    spm = gemma_spm()
    tokenizer = gemma_tokenizer(spm)
    paths = write_gemma_layouts(tiny_gemma2(len(tokenizer), seed=2), tokenizer, spm,
                                str(tmp_path_factory.mktemp("gemma")))
    return tokenizer, paths


def wan_forward(model):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 2, 4, 4, generator=generator)
    embeds = torch.randn(1, 8, model.config.text_dim, generator=generator)
    with torch.no_grad():
        return model(hidden_states=x, timestep=torch.tensor([700.0]), encoder_hidden_states=embeds,
                     return_dict=False)[0]


def rounded_through(model, storage):
    """`model` (float32) with the weights of its stored layers rounded to `storage` and back: what an fp8 / bf16
    stored model must compute, layer for layer."""
    with torch.no_grad():
        for layer in stored_layers(model).values():
            layer.weight.copy_(layer.weight.to(storage).float())
    return model


def relative_error(output, expected):
    return ((output - expected).abs().max() / expected.abs().max()).item()


class DeviceMixes(TorchFunctionMode):
    """Records every torch call that gets tensors on two devices (CPU scalars, which torch allows, aside).

    Meta tensors hold no values: a branch on one (transformers' mask shortcuts) takes the True side.
    """

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.__bool__ and args[0].is_meta:
            return True
        devices = {t.device for t in pytree.tree_leaves((args, kwargs))
                   if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.dim() == 0)}
        if len(devices) > 1:
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


def partially_on_meta(handle, fraction=0.3):
    """`handle` loaded with a weight budget of `fraction` of its weights on the meta device, the rest on the CPU."""
    total = sum(direct_bytes(m) for m in handle.module.modules())
    clone = bridge.with_memory_options(handle, weight_budget=int(total * fraction))
    clone.patcher.load_device = META
    return clone.load()


# ------------------------------------------------------------------------------------------------ weight storage


@pytest.mark.parametrize("build", [lambda: tiny_wan_transformer("i2v"), lambda: tiny_sana_transformer("4k")])
def test_stored_layers_are_the_ones_diffusers_layerwise_casting_stores(build):
    ours, theirs = build(), build()
    theirs.enable_layerwise_casting(storage_dtype=E4M3, compute_dtype=torch.float32)
    cast_by_diffusers = {name for name, m in theirs.named_modules()
                         if getattr(m, "_diffusers_hook", None) and m._diffusers_hook.get_hook("layerwise_casting")}
    embeddings = {name for name, m in theirs.named_modules() if isinstance(m, torch.nn.Embedding)}
    assert set(stored_layers(ours)) == cast_by_diffusers - embeddings
    assert any(".attn1.to_q" in name for name in cast_by_diffusers)


@pytest.mark.parametrize("storage", [E4M3, E5M2, BF16])
def test_storage_holds_the_weights_in_its_dtype_and_computes_them_cast_up(wan_files, storage):
    _, paths = wan_files
    full, _ = load_wan_transformer(paths["diffusers_single"], torch.float32)
    stored, _ = load_wan_transformer(paths["diffusers_single"], torch.float32, storage)
    layers = stored_layers(full)
    assert {name.split(".", 2)[2] for name in layers} == {
        f"{attn}.{p}" for attn in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")
    } | {"ffn.net.0.proj", "ffn.net.2"}
    for name, tensor in stored.state_dict().items():
        in_stored_layer = name.endswith(".weight") and name[: -len(".weight")] in layers
        assert tensor.dtype == (storage if in_stored_layer else torch.float32), name
    assert stored.dtype == torch.float32 and isinstance(stored.blocks[0].ffn.net[2], torch.nn.Linear)
    output, expected = wan_forward(stored), wan_forward(full)
    assert torch.equal(output, wan_forward(rounded_through(full, storage)))
    assert 0 < relative_error(output, expected) <= TOLERANCE[storage]


def test_fp8_storage_takes_half_the_bytes_of_bf16_storage(wan_files):
    _, paths = wan_files
    fp8, _ = load_wan_transformer(paths["diffusers_single"], BF16, E4M3)
    bf16, _ = load_wan_transformer(paths["diffusers_single"], BF16)
    fp8_sizes, bf16_sizes = stored_bytes(fp8), stored_bytes(bf16)
    assert fp8_sizes[E4M3] > 0 and 2 * fp8_sizes[E4M3] + fp8_sizes[BF16] == bf16_sizes[BF16]
    assert fp8_sizes[torch.float32] == bf16_sizes[torch.float32], "diffusers' float32 modules stay float32"


@pytest.mark.parametrize("layout", ["comfy_fp8_scaled", "fp8_plain"])
def test_fp8_files_stay_fp8_and_compute_what_the_dequantising_load_computes(wan_files, layout):
    _, paths = wan_files
    kept, _ = load_wan_transformer(paths[layout], torch.float32, E4M3)
    dequantised, _ = load_wan_transformer(paths[layout], torch.float32)
    to_q = kept.blocks[0].attn1.to_q
    assert to_q.weight.dtype == E4M3 and dequantised.blocks[0].attn1.to_q.weight.dtype == torch.float32
    assert hasattr(to_q, "scale_weight") == (layout == "comfy_fp8_scaled")
    assert torch.equal(wan_forward(kept), wan_forward(dequantised))
    assert stored_bytes(kept)[E4M3] * 4 == sum(layer.weight.numel() * 4 for layer in stored_layers(kept).values())


def test_a_scaled_fp8_file_stored_in_e5m2_is_dequantised_then_cast(wan_files):
    _, paths = wan_files
    e5m2, _ = load_wan_transformer(paths["comfy_fp8_scaled"], torch.float32, E5M2)
    dequantised, _ = load_wan_transformer(paths["comfy_fp8_scaled"], torch.float32)
    assert e5m2.blocks[0].attn1.to_q.weight.dtype == E5M2 and not hasattr(e5m2.blocks[0].attn1.to_q, "scale_weight")
    assert relative_error(wan_forward(e5m2), wan_forward(dequantised)) <= TOLERANCE[E5M2]


def test_sampling_with_fp8_weights_follows_the_full_precision_run(tmp_path):
    path = str(tmp_path / "wan.safetensors")
    save_file(tiny_wan_transformer(seed=4, text_dim=32).state_dict(), path)
    generator = torch.Generator().manual_seed(5)
    pos, neg = torch.randn(1, 16, 32, generator=generator), torch.randn(1, 16, 32, generator=generator)
    mask = torch.ones(1, 16, dtype=torch.int64)
    args = ({"samples": torch.zeros(1, 16, 2, 4, 4)}, make_conditioning(pos, mask), make_conditioning(neg, mask), 3,
            4, 4.0, 5.0, "flow_unipc")
    results = {}
    for storage in (None, E4M3):
        handle = bridge.ModelHandle(load_wan_transformer(path, torch.float32, storage)[0], "diffusion")
        with torch.inference_mode():
            results[storage] = sample_wan(handle.load(), *args)
    assert 0 < relative_error(results[E4M3], results[None]) <= 0.05


def test_text_encoders_store_their_linear_weights(umt5_files, gemma_files):
    tokenizer, paths = umt5_files
    full, _ = load_umt5_encoder(paths["comfy_single"], torch.float32)
    stored, _ = load_umt5_encoder(paths["comfy_single"], torch.float32, E4M3)
    ffn = stored.encoder.block[0].layer[1].DenseReluDense
    assert stored.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == ffn.wi_0.weight.dtype == E4M3
    # UMT5 casts the FFN's hidden state to `wo`'s dtype (transformers keeps `wo` in float32 for that reason).
    assert ffn.wo.weight.dtype == stored.shared.weight.dtype == torch.float32
    prompt = ["a lighthouse in a storm"]
    output = encode_wan_prompt(stored, tokenizer, prompt)[0]
    assert torch.equal(output, encode_wan_prompt(rounded_through(full, E4M3), tokenizer, prompt)[0])
    scaled, _ = load_umt5_encoder(paths["comfy_fp8_scaled"], torch.float32, E4M3)
    dequantised, _ = load_umt5_encoder(paths["comfy_fp8_scaled"], torch.float32)
    assert torch.equal(encode_wan_prompt(scaled, tokenizer, prompt)[0], encode_wan_prompt(dequantised, tokenizer, prompt)[0])

    tokenizer, paths = gemma_files
    full, _ = load_gemma_text_encoder(paths["comfy_single"], torch.float32)
    stored, _ = load_gemma_text_encoder(paths["comfy_single"], torch.float32, BF16)
    assert stored.layers[0].mlp.down_proj.weight.dtype == BF16 and stored.embed_tokens.weight.dtype == torch.float32
    assert stored.norm.weight.dtype == torch.float32 and stored.dtype == torch.float32
    expected = encode_sana_prompt(full, tokenizer, prompt)[0]
    output = encode_sana_prompt(stored, tokenizer, prompt)[0]
    assert 0 < relative_error(output, expected) <= TOLERANCE[BF16]
    assert torch.equal(output, encode_sana_prompt(rounded_through(full, BF16), tokenizer, prompt)[0])


def test_unknown_storage_choices_are_refused(wan_files):
    _, paths = wan_files
    with pytest.raises(ValueError, match="weight_storage must be one of"):
        NODES["WanTransformerLoader"]().load(paths["diffusers_single"], "fp32", "int4")
    with pytest.raises(ValueError, match="not torch.float16"):
        load_wan_transformer(paths["diffusers_single"], torch.float32, torch.float16)
    (handle,) = NODES["WanTransformerLoader"]().load(paths["diffusers_single"], "fp32", "fp8_e5m2")
    assert handle.module.blocks[1].ffn.net[0].proj.weight.dtype == E5M2


# ------------------------------------------------------------------------------------------------ partial loading


def test_a_weight_budget_loads_the_largest_layers_within_it():
    handle = bridge.ModelHandle(tiny_wan_transformer(seed=1), "diffusion")
    module = partially_on_meta(handle, fraction=0.4)
    owners = [m for m in module.modules() if direct_bytes(m)]
    loaded = [m for m in owners if all(t.is_meta for t in [*m._parameters.values(), *m._buffers.values()]
                                       if t is not None)]
    total = sum(map(direct_bytes, owners))
    assert 0 < sum(map(direct_bytes, loaded)) <= 0.4 * total < total
    assert max(map(direct_bytes, owners)) == max(map(direct_bytes, loaded)), "largest first, as ComfyUI loads"
    assert execution_device(module) == META and all(isinstance(m, CastOnCall) for m in owners)


def _wan_step(module):
    pos = make_conditioning(torch.randn(1, 16, 32), torch.ones(1, 16, dtype=torch.int64))
    predict = wan_velocity(module, pos, pos, 5.0, (1, 16, 2, 4, 4))
    return predict(torch.randn(1, 16, 2, 4, 4, device=META), torch.tensor(0.5, device=META), 0, 4)


def _sana_step(module):
    pos = make_conditioning(torch.randn(1, 6, 32), torch.ones(1, 6, dtype=torch.int64))
    predict = sana_velocity(module, pos, pos, 5.0, 1)
    return predict(torch.randn(1, 8, 4, 4, device=META), torch.tensor(0.5, device=META), 0, 4)


@pytest.mark.parametrize("build, step", [(lambda: tiny_wan_transformer(seed=1, text_dim=32), _wan_step),
                                         (lambda: tiny_sana_transformer("4k", seed=1), _sana_step)])
def test_a_partially_loaded_transformer_computes_only_on_its_load_device(build, step):
    module = partially_on_meta(bridge.ModelHandle(build(), "diffusion"))
    mixes = DeviceMixes()
    with mixes, torch.inference_mode():
        velocity = step(module)
    assert velocity.device == META and mixes.calls == []


def test_partially_loaded_text_encoders_compute_only_on_their_load_device(umt5_files, gemma_files):
    for (tokenizer, paths), load, encode in ((umt5_files, load_umt5_encoder, encode_wan_prompt),
                                             (gemma_files, load_gemma_text_encoder, encode_sana_prompt)):
        encoder, _ = load(paths["comfy_single"], torch.float32, E4M3)
        module = partially_on_meta(bridge.ModelHandle(encoder, "text_encoder"))
        mixes = DeviceMixes()
        with mixes, torch.inference_mode():
            embeds, _ = encode(module, tokenizer, ["a red fox"])
        assert embeds.device == META and mixes.calls == [], encode.__name__


def test_the_device_check_sees_layers_that_cannot_fetch_their_weights():
    """The control for the tests above: the same placement without cast-on-call layers mixes devices."""
    module = tiny_wan_transformer(seed=1, text_dim=32)
    place_within(module, sum(map(direct_bytes, module.modules())) // 3, META, CPU)
    set_execution_device(module, META)
    mixes = DeviceMixes()
    with mixes, torch.inference_mode(), pytest.raises(RuntimeError):
        _wan_step(module)
    assert mixes.calls


# ------------------------------------------------------------------------------------------------ the bridge with ComfyUI


def test_comfyui_patcher_caps_the_weights_it_loads_at_the_budget(fake_comfy, monkeypatch):  # noqa: F811
    patcher_module = sys.modules["comfy.model_patcher"]

    class ModelPatcher(patcher_module.ModelPatcher):
        def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
            self.asked = extra_memory

        def loaded_size(self):
            return 300

    monkeypatch.setattr(patcher_module, "ModelPatcher", ModelPatcher)
    handle = bridge.ModelHandle(torch.nn.Linear(4, 4), "diffusion")
    assert isinstance(handle.module, CastOnCall) and isinstance(handle.patcher, ModelPatcher)
    capped = bridge.with_memory_options(handle, weight_budget=1000)
    assert capped.patcher.weight_budget == 1000 and handle.patcher.weight_budget is None
    assert capped.patcher.clone().weight_budget == 1000 and capped.module is handle.module
    capped.patcher.partially_load("cuda", 1e32)
    handle.patcher.partially_load("cuda", 1e32)
    assert (capped.patcher.asked, handle.patcher.asked) == (700, 1e32)


def test_text_encoder_on_the_cpu(fake_comfy, monkeypatch, umt5_files):  # noqa: F811
    calls, _ = fake_comfy
    detached = []
    monkeypatch.setattr(sys.modules["comfy.model_management"], "text_encoder_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(sys.modules["comfy.model_patcher"].ModelPatcher, "detach", lambda self: detached.append(self),
                        raising=False)
    tokenizer, paths = umt5_files
    encoder, _ = load_umt5_encoder(paths["comfy_single"], torch.float32)
    handle = bridge.ModelHandle(encoder, "text_encoder")
    on_cpu = bridge.with_memory_options(handle, load_on_cpu=True)
    assert handle.patcher.load_device == torch.device("cuda") and on_cpu.patcher.load_device == CPU
    # The GPU clone loaded the shared weights: ComfyUI would take them as loaded, so the CPU clone unloads them.
    holder = handle.patcher.model
    holder.model_loaded_weight_memory, holder.device = 1, torch.device("cuda")
    module = on_cpu.load()
    assert detached == [on_cpu.patcher] and calls["load"][-1][0] == [on_cpu.patcher]
    assert execution_device(module) == CPU
    embeds, _ = encode_wan_prompt(module, tokenizer, ["a red fox"])
    assert embeds.device == CPU
    holder.device = CPU
    handle.load()
    assert detached == [on_cpu.patcher, handle.patcher] and execution_device(module) == torch.device("cuda")


# ------------------------------------------------------------------------------------------------ the memory nodes


def test_memory_nodes_return_clones_and_change_nothing_by_default(umt5_files):
    model = bridge.ModelHandle(tiny_wan_transformer(seed=1), "diffusion", family="wan")
    (same,) = NODES["WanModelMemoryOptions"]().apply(model, 0.0)
    (capped,) = NODES["WanModelMemoryOptions"]().apply(model, 1.5)
    assert same.patcher is not model.patcher and same.module is model.module and same.patcher.weight_budget is None
    assert capped.patcher.weight_budget == int(1.5 * 2**30) and model.patcher.weight_budget is None
    assert capped.info["family"] == "wan"
    encoder, _ = load_umt5_encoder(umt5_files[1]["comfy_single"], torch.float32)
    text_encoder = bridge.ModelHandle(encoder, "text_encoder", family="wan")
    text_encoder.patcher.load_device = META
    (default,) = NODES["WanTextEncoderMemoryOptions"]().apply(text_encoder, "default", 0.0)
    (on_cpu,) = NODES["WanTextEncoderMemoryOptions"]().apply(text_encoder, "cpu", 0.0)
    assert default.patcher.load_device == META and on_cpu.patcher.load_device == CPU
    node = NODES["SanaModelMemoryOptions"]
    assert "positive number" in node.VALIDATE_INPUTS(-1.0) and "positive number" in node.VALIDATE_INPUTS(math.nan)
    assert node.VALIDATE_INPUTS(2.0) is True and node.VALIDATE_INPUTS(None) is True
    assert "device must be" in NODES["SanaTextEncoderMemoryOptions"].VALIDATE_INPUTS("gpu", 0.0)
    with pytest.raises(ValueError, match="positive number"):
        node().apply(model, math.inf)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_weights_beyond_the_fp8_range_are_clamped_not_turned_into_inf_or_nan(dtype):
    limit = torch.finfo(dtype).max
    stored = to_storage(torch.tensor([3.0 * limit, -3.0 * limit, 1.0]), dtype).to(torch.float32)
    assert stored.tolist() == [limit, -limit, 1.0]


def comfy_get_key_weight(model: torch.nn.Module, key: str):
    """What ComfyUI 0.33's `comfy/model_patcher.py` `get_key_weight` reads of a castable layer: `op.weight` and
    `op.bias` of the module that owns `key` (an AttributeError there failed every model load)."""
    op = model.get_submodule(key.rsplit(".", 1)[0])
    return getattr(op, key.rsplit(".", 1)[1])


@pytest.mark.parametrize("build", [lambda: tiny_wan_transformer("i2v"), lambda: tiny_sana_transformer("4k"),
                                   lambda: tiny_umt5(64), lambda: tiny_gemma2(64)])
def test_layers_comfyui_loads_as_castable_are_shaped_like_its_own(build):
    from sana_wan.loaders.cast_layers import ComfyCastable, install

    model = install(build())
    castable = {name: m for name, m in model.named_modules() if hasattr(m, "comfy_cast_weights")}
    others = [m for m in model.modules() if isinstance(m, CastOnCall) and not hasattr(m, "comfy_cast_weights")]
    assert castable  # Linear / Conv / Embedding / norm layers with a weight and a bias or none
    for name, module in castable.items():
        assert isinstance(module, ComfyCastable)
        assert isinstance(comfy_get_key_weight(model, f"{name}.weight"), torch.nn.Parameter)
        bias = comfy_get_key_weight(model, f"{name}.bias")
        assert bias is None or isinstance(bias, torch.Tensor)
    for module in others:  # norms with a gamma or a float bias, modulation tables, RoPE buffers: plain modules
        own = {name for name, t in [*module._parameters.items(), *module._buffers.items()] if t is not None}
        assert own - {"weight", "bias"} or not isinstance(getattr(module, "weight", None), torch.nn.Parameter) or \
            not isinstance(getattr(module, "bias", None), (torch.Tensor, type(None)))


def test_a_layer_without_bias_reads_as_none_and_other_attributes_still_raise():
    from sana_wan.loaders.cast_layers import install

    model = install(torch.nn.Sequential(torch.nn.Embedding(4, 3), torch.nn.Linear(3, 2, bias=False)))
    assert model[0].bias is None and model[1].bias is None
    with pytest.raises(AttributeError, match="no_such"):
        model[0].no_such


def test_a_managed_fetch_supplies_weight_and_bias_and_is_released_after_the_call():
    from sana_wan.loaders.cast_layers import install

    layer = torch.nn.Linear(3, 2)
    fetched, released = [], []

    def fetch(module, device):
        fetched.append(device)
        return {"weight": weight * 2, "bias": torch.zeros(2)}, lambda: released.append(1)

    x, weight = torch.randn(4, 3), layer.weight.detach().clone()
    expected = x @ (weight * 2).T
    install(layer.to(META), fetch=fetch)  # weights held elsewhere: the call on the CPU fetches them
    out = layer(x)
    assert fetched == [torch.device("cpu")] and released == [1]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert layer.weight.is_meta and layer.bias.is_meta  # the layer's own tensors are as they were
