"""Sana and Wan LoRA loader nodes: every file layout gives the forward of diffusers' load_lora_adapter + set_adapters
on the same tiny transformer; clones never leak their weights into the base handle; bad files fail clearly."""

import copy
import logging

import pytest
import torch
from diffusers.loaders import WanLoraLoaderMixin
from safetensors.torch import load_file

import tiny_lora
from gguf_files import T as GGMLType
from gguf_files import write_wan_gguf
from sana_wan import comfy_bridge as bridge
from sana_wan.loaders.lora import fit_lora
from sana_wan.loaders.wan_transformer import load_wan_transformer
from sana_wan.nodes.lora import SanaLoraLoader, WanLoraLoader
from tiny_sana import tiny_sana_transformer
from tiny_wan import tiny_wan_transformer, write_wan_layouts

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def wan():
    return tiny_wan_transformer(seed=3, text_dim=32)


@pytest.fixture(scope="module")
def sana():
    """Output projection scaled down: tiny_sana's outputs reach 15, where float32 rounding alone is ~1e-6 and the
    1e-5 tolerance would be at its limit; at O(1) it is ten times the rounding."""
    model = tiny_sana_transformer(seed=4)
    with torch.no_grad():
        model.proj_out.weight.mul_(0.1)
        model.proj_out.bias.mul_(0.1)
    return model


def _inputs(model):
    generator = torch.Generator().manual_seed(7)
    if hasattr(model, "condition_embedder"):
        return (torch.randn(1, 16, 1, 4, 4, generator=generator), torch.tensor([600.0]),
                torch.randn(1, 5, 32, generator=generator))
    return (torch.randn(1, 8, 4, 4, generator=generator), torch.tensor([600.0]),
            torch.randn(1, 5, 32, generator=generator))


def _forward(model):
    x, t, text = _inputs(model)
    with torch.no_grad():
        return model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]


def _through_handle(handle):
    return _forward(handle.load())


def _handle(model, family):
    return bridge.ModelHandle(copy.deepcopy(model), "diffusion", family=family)


def _diffusers(model, adapters):
    """diffusers' reference: `adapters` = [(PEFT tensors with the transformer. prefix, weight, metadata)]."""
    reference = copy.deepcopy(model)
    for index, (tensors, _, metadata) in enumerate(adapters):
        reference.load_lora_adapter(dict(tensors), prefix="transformer", adapter_name=f"a{index}", metadata=metadata)
    reference.set_adapters([f"a{i}" for i in range(len(adapters))], weights=[w for _, w, _ in adapters])
    return _forward(reference)


def _node(family):
    return (WanLoraLoader if family == "wan" else SanaLoraLoader)()


def _apply(handle, family, path, strength):
    return _node(family).load(handle, path, strength)[0]


def _wan_reference(path):
    """diffusers' own reading of a Wan LoRA file: its converters for the ComfyUI / musubi layouts."""
    return WanLoraLoaderMixin.lora_state_dict(load_file(path))


WAN_LAYOUTS = {
    "diffusers": lambda lora: tiny_lora.peft(lora),
    "peft_without_prefix": lambda lora: tiny_lora.peft(lora, prefix=""),
    "peft_default_adapter": lambda lora: {k.replace(".weight", ".default.weight"): v
                                          for k, v in tiny_lora.peft(lora).items()},
    "comfy_lora_A_B": lambda lora: tiny_lora.original(lora),
    "comfy_down_up_alpha": lambda lora: tiny_lora.original(lora, names=("lora_down", "lora_up"), alpha=2.0),
    "comfy_with_diff_b": lambda lora: {**tiny_lora.original(lora), **tiny_lora.diff_b(lora)},
    "musubi_kohya_alpha": lambda lora: tiny_lora.original(lora, "lora_unet_", ("lora_down", "lora_up"), 8.0, True),
    "wan_fun_kohya": lambda lora: tiny_lora.original(lora, "lora_unet__", ("lora_down", "lora_up"), 8.0, True),
    "diffsynth_bare": lambda lora: tiny_lora.original(lora, prefix=""),
}
# Layouts diffusers reads itself (through its Wan converters); the others are checked against the PEFT tensors
# with the file's alpha folded in.
DIFFUSERS_READS = {"diffusers", "comfy_lora_A_B", "comfy_down_up_alpha", "comfy_with_diff_b", "musubi_kohya_alpha"}
ALPHAS = {"wan_fun_kohya": 8.0}


@pytest.mark.parametrize("layout", list(WAN_LAYOUTS))
def test_wan_lora_layouts_equal_diffusers(wan, tmp_path, layout):
    lora = tiny_lora.make_lora(wan, seed=1)
    path = tiny_lora.save(WAN_LAYOUTS[layout](lora), str(tmp_path / f"{layout}.safetensors"))
    reference = _wan_reference(path) if layout in DIFFUSERS_READS else tiny_lora.peft(lora, alpha=ALPHAS.get(layout))
    expected = _diffusers(wan, [(reference, 0.7, None)])
    ours = _through_handle(_apply(_handle(wan, "wan"), "wan", path, 0.7))
    assert (ours - expected).abs().max() <= TOLERANCE
    assert (ours - _forward(wan)).abs().max() > 100 * TOLERANCE, "the LoRA must change the output"


SANA_LAYOUTS = {
    "diffusers": lambda lora: tiny_lora.peft(lora),
    "onetrainer_kohya": lambda lora: _kohya_diffusers_names(lora, alpha=2.0),
    "original_fused_alpha": lambda lora: tiny_lora.original(lora, names=("lora_down", "lora_up"), alpha=2.0),
    "kohya_original_alpha": lambda lora: tiny_lora.original(lora, "lora_unet_", ("lora_down", "lora_up"), 2.0, True),
}


def _kohya_diffusers_names(lora, alpha):
    tensors = {}
    for layer, (down, up) in lora.items():
        name = "lora_transformer_" + layer.replace(".", "_")
        tensors.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                        f"{name}.alpha": torch.tensor(alpha)})
    return tensors


@pytest.mark.parametrize("layout", list(SANA_LAYOUTS))
def test_sana_lora_layouts_equal_diffusers(sana, tmp_path, layout):
    """The fused qkv / kv layers of original-layout files are split onto diffusers' to_q / to_k / to_v."""
    lora = tiny_lora.make_lora(sana, seed=2)
    path = tiny_lora.save(SANA_LAYOUTS[layout](lora), str(tmp_path / f"{layout}.safetensors"))
    alpha = None if layout == "diffusers" else 2.0
    expected = _diffusers(sana, [(tiny_lora.peft(lora, alpha=alpha), 1.3, None)])
    ours = _through_handle(_apply(_handle(sana, "sana"), "sana", path, 1.3))
    assert (ours - expected).abs().max() <= TOLERANCE
    assert (ours - _forward(sana)).abs().max() > 100 * TOLERANCE


def test_alpha_from_diffusers_metadata(wan, tmp_path):
    """diffusers keeps a PEFT LoRA's alpha in the file's header, not in tensors."""
    lora = tiny_lora.make_lora(wan, seed=5)
    WanLoraLoaderMixin.save_lora_weights(str(tmp_path), transformer_lora_layers=tiny_lora.peft(lora, prefix=""),
                                         transformer_lora_adapter_metadata={
                                             "r": 4, "lora_alpha": 12, "target_modules": sorted(lora)})
    path = str(tmp_path / "pytorch_lora_weights.safetensors")
    tensors, metadata = WanLoraLoaderMixin.lora_state_dict(path, return_lora_metadata=True)
    expected = _diffusers(wan, [(tensors, 0.5, metadata)])
    ours = _through_handle(_apply(_handle(wan, "wan"), "wan", path, 0.5))
    assert (ours - expected).abs().max() <= TOLERANCE
    assert (ours - _diffusers(wan, [(tensors, 0.5, None)])).abs().max() > 100 * TOLERANCE, "alpha 12 / rank 4 counts"


def test_full_weight_diffs(wan, tmp_path, caplog):
    """diff / diff_b add to the weights as they are; a block's modulation table is reported, not applied (ComfyUI
    patches only layers' own parameters)."""
    generator = torch.Generator().manual_seed(9)
    changes = {"blocks.1.attn2.to_k.weight": "blocks.1.cross_attn.k.diff", "proj_out.weight": "head.head.diff",
               "blocks.0.norm2.weight": "blocks.0.norm3.diff", "blocks.0.ffn.net.2.bias": "blocks.0.ffn.2.diff_b"}
    parameters = dict(wan.named_parameters())
    diffs = {name: torch.randn(parameters[name].shape, generator=generator) * 0.1 for name in changes}
    tensors = {"diffusion_model." + key: diffs[name] for name, key in changes.items()}
    tensors["diffusion_model.blocks.0.modulation.diff"] = torch.ones(1, 6, 128)
    path = tiny_lora.save(tensors, str(tmp_path / "diffs.safetensors"))
    reference = copy.deepcopy(wan)
    with torch.no_grad():
        for name, diff in diffs.items():
            reference.get_parameter(name).add_(-0.6 * diff)
    with caplog.at_level(logging.WARNING):
        ours = _through_handle(_apply(_handle(wan, "wan"), "wan", path, -0.6))
    assert (ours - _forward(reference)).abs().max() <= TOLERANCE
    assert "diffusion_model.blocks.0.modulation.diff" in caplog.text


def test_strength_zero_is_the_base_model(wan, tmp_path):
    path = tiny_lora.save(tiny_lora.peft(tiny_lora.make_lora(wan)), str(tmp_path / "l.safetensors"))
    handle = _handle(wan, "wan")
    assert _apply(handle, "wan", path, 0.0) is handle
    assert torch.equal(_through_handle(_apply(handle, "wan", path, 0.0)), _forward(wan))


def test_two_chained_loras_equal_two_diffusers_adapters(wan, tmp_path):
    first, second = tiny_lora.make_lora(wan, seed=1), tiny_lora.make_lora(wan, rank=2, seed=2)
    path_a = tiny_lora.save(tiny_lora.peft(first), str(tmp_path / "a.safetensors"))
    path_b = tiny_lora.save(WAN_LAYOUTS["musubi_kohya_alpha"](second), str(tmp_path / "b.safetensors"))
    expected = _diffusers(wan, [(tiny_lora.peft(first), 0.8, None), (_wan_reference(path_b), -0.5, None)])
    chained = _apply(_apply(_handle(wan, "wan"), "wan", path_a, 0.8), "wan", path_b, -0.5)
    assert (_through_handle(chained) - expected).abs().max() <= TOLERANCE


@pytest.mark.parametrize("lora_first", [False, True])
def test_base_handle_never_sees_the_clone_weights(wan, tmp_path, lora_first):
    """Handles share one module; each load gives it that handle's weights (ComfyUI's patch / restore on load)."""
    path = tiny_lora.save(tiny_lora.peft(tiny_lora.make_lora(wan)), str(tmp_path / "l.safetensors"))
    base = _handle(wan, "wan")
    with_lora = _apply(base, "wan", path, 1.0)
    expected_lora = _diffusers(wan, [(tiny_lora.peft(tiny_lora.make_lora(wan)), 1.0, None)])
    order = [with_lora, base, with_lora, base] if lora_first else [base, with_lora, base, with_lora]
    for handle in order:
        output = _through_handle(handle)
        if handle is base:
            assert torch.equal(output, _forward(wan))
        else:
            assert (output - expected_lora).abs().max() <= TOLERANCE
    base.load()
    assert all(torch.equal(a, b) for a, b in zip(base.module.state_dict().values(), wan.state_dict().values()))


def test_unmatched_keys_are_logged_by_name(wan, tmp_path, caplog):
    lora = tiny_lora.make_lora(wan)
    extra = {"transformer.blocks.0.attn1.to_qq.lora_A.weight": torch.zeros(4, 128),
             "transformer.blocks.0.attn1.to_qq.lora_B.weight": torch.zeros(128, 4),
             "text_encoder.encoder.block.0.q.lora_A.weight": torch.zeros(4, 8),
             "text_encoder.encoder.block.0.q.lora_B.weight": torch.zeros(8, 4),
             "transformer.blocks.0.attn1.to_q.lora_magnitude_vector": torch.ones(128)}
    path = tiny_lora.save({**tiny_lora.peft(lora), **extra}, str(tmp_path / "extra.safetensors"))
    with caplog.at_level(logging.WARNING):
        ours = _through_handle(_apply(_handle(wan, "wan"), "wan", path, 1.0))
    for key in extra:
        assert key in caplog.text
    assert (ours - _diffusers(wan, [(tiny_lora.peft(lora), 1.0, None)])).abs().max() <= TOLERANCE


def test_lora_for_the_other_family_is_refused(wan, sana, tmp_path):
    wan_path = tiny_lora.save(tiny_lora.original(tiny_lora.make_lora(wan)), str(tmp_path / "wan.safetensors"))
    sana_path = tiny_lora.save(tiny_lora.original(tiny_lora.make_lora(sana)), str(tmp_path / "sana.safetensors"))
    with pytest.raises(ValueError, match="is a Wan LoRA; .* Wan LoRA Loader"):
        _apply(_handle(sana, "sana"), "sana", wan_path, 1.0)
    with pytest.raises(ValueError, match="is a Sana LoRA; .* Sana LoRA Loader"):
        _apply(_handle(wan, "wan"), "wan", sana_path, 1.0)
    sdxl = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}
    with pytest.raises(ValueError, match="No layer of LoRA .*'lora_unet_down_blocks_0_attentions_0_proj_in'"):
        _apply(_handle(wan, "wan"), "wan", tiny_lora.save(sdxl, str(tmp_path / "sdxl.safetensors")), 1.0)


def test_lora_of_another_model_size_names_the_first_offending_key(wan, tmp_path):
    wider_ffn = tiny_wan_transformer(seed=3, text_dim=32, ffn_dim=384)
    path = tiny_lora.save(tiny_lora.peft(tiny_lora.make_lora(wider_ffn)), str(tmp_path / "l.safetensors"))
    first = "transformer.blocks.0.ffn.net.0.proj.lora_A.weight"
    with pytest.raises(ValueError, match=f"does not fit this Wan model: '{first}' changes "
                                         r"'blocks.0.ffn.net.0.proj.weight' \(256, 128\)"):
        _apply(_handle(wan, "wan"), "wan", path, 1.0)


def test_rank_mismatch_names_both_keys(sana, tmp_path):
    tensors = tiny_lora.peft(tiny_lora.make_lora(sana))
    tensors["transformer.transformer_blocks.1.attn2.to_q.lora_A.weight"] = torch.zeros(3, 64)
    path = tiny_lora.save(tensors, str(tmp_path / "l.safetensors"))
    with pytest.raises(ValueError, match=r"'transformer.transformer_blocks.1.attn2.to_q.lora_B.weight' \(64, 4\) and "
                                         r"'transformer.transformer_blocks.1.attn2.to_q.lora_A.weight' \(3, 64\)"):
        _apply(_handle(sana, "sana"), "sana", path, 1.0)


def test_incomplete_layer_is_refused(wan, tmp_path):
    tensors = tiny_lora.peft(tiny_lora.make_lora(wan))
    del tensors["transformer.blocks.1.attn1.to_v.lora_A.weight"]
    path = tiny_lora.save(tensors, str(tmp_path / "l.safetensors"))
    with pytest.raises(ValueError, match="incomplete: layer 'transformer.blocks.1.attn1.to_v' .* no lora_down"):
        _apply(_handle(wan, "wan"), "wan", path, 1.0)


def test_loha_and_lokr_need_comfyui_outside_it(wan, tmp_path):
    loha = {"diffusion_model.blocks.0.self_attn.q.hada_w1_a": torch.zeros(128, 2),
            "diffusion_model.blocks.0.self_attn.q.hada_w1_b": torch.zeros(2, 128),
            "diffusion_model.blocks.0.self_attn.q.hada_w2_a": torch.zeros(128, 2),
            "diffusion_model.blocks.0.self_attn.q.hada_w2_b": torch.zeros(2, 128)}
    path = tiny_lora.save(loha, str(tmp_path / "loha.safetensors"))
    with pytest.raises(ValueError, match="applied by ComfyUI's weight adapters"):
        _apply(_handle(wan, "wan"), "wan", path, 1.0)


def test_sprint_timestep_embedder_layers(tmp_path):
    """Sprint keeps the original t_embedder under other diffusers names than the other Sana models."""
    names = {}
    for variant in ("base", "sprint"):
        model = tiny_sana_transformer(variant)
        tensors = {"lora_unet_t_embedder_mlp_0.lora_down.weight": torch.zeros(2, 256),
                   "lora_unet_t_embedder_mlp_0.lora_up.weight": torch.zeros(64, 2)}
        names[variant] = list(fit_lora(tensors, {}, model, "sana", "t.safetensors").layers)
    assert names == {"base": ["time_embed.emb.timestep_embedder.linear_1"],
                     "sprint": ["time_embed.timestep_embedder.linear_1"]}


def test_strength_must_be_finite(wan):
    with pytest.raises(ValueError, match="finite"):
        _apply(_handle(wan, "wan"), "wan", "unused.safetensors", float("nan"))


def test_lora_on_weights_stored_as_scaled_fp8(wan, tmp_path):
    """ComfyUI's scaled-fp8 layers take the LoRA on their dequantised weight and store the sum scaled again
    (convert_weight / set_weight): the result is off from fp32 by about the fp8 rounding the base already has, and
    the base handle gets its fp8 weights back bit for bit."""
    model_path = write_wan_layouts(wan, str(tmp_path))["comfy_fp8_scaled"]
    base = bridge.ModelHandle(load_wan_transformer(model_path, torch.float32, torch.float8_e4m3fn)[0], "diffusion")
    lora = tiny_lora.make_lora(wan, seed=1)
    path = tiny_lora.save(tiny_lora.peft(lora), str(tmp_path / "l.safetensors"))
    base_output = _through_handle(base)
    ours = _through_handle(_apply(base, "wan", path, 0.7))
    fp8_rounding = (base_output - _forward(wan)).abs().max()
    assert (ours - _diffusers(wan, [(tiny_lora.peft(lora), 0.7, None)])).abs().max() <= 2 * fp8_rounding
    assert (ours - base_output).abs().max() > 4 * fp8_rounding
    assert torch.equal(_through_handle(base), base_output)


def test_gguf_quantized_model_is_refused(wan, tmp_path):
    model_path = write_wan_gguf(wan, str(tmp_path / "wan.gguf"), GGMLType.Q8_0)
    base = bridge.ModelHandle(load_wan_transformer(model_path, torch.float32)[0], "diffusion")
    path = tiny_lora.save(tiny_lora.peft(tiny_lora.make_lora(wan)), str(tmp_path / "l.safetensors"))
    with pytest.raises(ValueError, match="holds it quantized \\(GGUF\\)"):
        _apply(base, "wan", path, 1.0)
