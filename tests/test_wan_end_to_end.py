"""Wan2.1 text-to-video through the pack's nodes equals diffusers' WanPipeline on the same tiny weights.

The models are written in the Comfy-Org layouts (repackaged transformer, umt5 file with its tokenizer inside,
wan_2.1_vae) and loaded back by the loader nodes; the reference pipeline gets the in-memory source models.
"""

import pytest
import torch
from diffusers import WanPipeline
from tiny_models import tiny_wan_set, write_wan_files

import sana_wan
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.schedulers import make_scheduler

NODES = sana_wan.NODE_CLASS_MAPPINGS
PROMPT = "a fox runs through the snow"
NEGATIVE = "blurry, static"
WIDTH, HEIGHT, FRAMES, SEED, SHIFT = 48, 32, 9, 99, 8.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    models = tiny_wan_set()
    models["paths"] = write_wan_files(models, str(tmp_path_factory.mktemp("wan_models")))
    return models


def _run_nodes(paths, steps, cfg, solver, batch=1):
    (model,) = NODES["WanTransformerLoader"]().load(paths["transformer"], "fp32")
    (encoder,) = NODES["WanTextEncoderLoader"]().load(paths["text_encoder"], "fp32")
    (vae,) = NODES["WanVAELoader"]().load(paths["vae"], "fp32")
    positive, negative = NODES["WanTextEncode"]().encode(encoder, "\n".join([PROMPT] * batch), NEGATIVE, batch > 1)
    (latent,) = NODES["EmptyWanLatentVideo"]().generate(WIDTH, HEIGHT, FRAMES, 1)
    (samples,) = NODES["WanSampler"]().sample(model, positive, negative, latent, SEED, steps, cfg, SHIFT, solver,
                                              "default", 1.0)
    return NODES["WanVAEDecode"]().decode(vae, samples, "off", 256, 64)


def _run_reference(models, steps, cfg, solver):
    pipe = WanPipeline(tokenizer=models["tokenizer"], text_encoder=models["umt5"], transformer=models["transformer"],
                       vae=models["vae"], scheduler=make_scheduler(solver, SHIFT))
    pipe.set_progress_bar_config(disable=True)
    noise = comfy_noise((1, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8), SEED)
    with torch.no_grad():
        video = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
                     num_inference_steps=steps, guidance_scale=cfg, latents=noise, output_type="pt").frames
    return video[0].permute(0, 2, 3, 1)


@pytest.mark.parametrize("solver", ["flow_euler", "flow_unipc"])
def test_nodes_equal_wan_pipeline(models, solver):
    frames, frame_count = _run_nodes(models["paths"], steps=5, cfg=6.0, solver=solver)
    reference = _run_reference(models, steps=5, cfg=6.0, solver=solver)
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and frame_count == FRAMES
    assert (frames - reference).abs().max() <= 1e-4
    assert frames.std() > 0.01, "a flat video would make the comparison meaningless"


def test_a_batch_of_prompts_is_a_batch_of_videos(models):
    frames, frame_count = _run_nodes(models["paths"], steps=2, cfg=6.0, solver="flow_euler", batch=2)
    assert frames.shape[0] == 2 * FRAMES and frame_count == FRAMES
    assert (frames[:FRAMES] - frames[FRAMES:]).abs().max() > 0.01, "each video gets its own noise"


def test_bad_inputs_are_clear_errors(models):
    latent_node = NODES["EmptyWanLatentVideo"]
    assert "4n+1" in latent_node.VALIDATE_INPUTS(832, 480, 80, 1)
    assert "multiple of 16" in latent_node.VALIDATE_INPUTS(840, 480, 81, 1)
    assert latent_node.VALIDATE_INPUTS(832, 480, 81, 1) is True
    with pytest.raises(ValueError, match="4n\\+1"):
        latent_node().generate(832, 480, 80, 1)
    with pytest.raises(ValueError, match="Sana transformer|detected"):
        NODES["WanTransformerLoader"]().load(_sana_file(models["paths"]), "fp32")
    (model,) = NODES["WanTransformerLoader"]().load(models["paths"]["transformer"], "fp32")
    with pytest.raises(ValueError, match="steps"):
        NODES["WanSampler"]().sample(model, [], [], {"samples": torch.zeros(1, 16, 1, 2, 2)}, 0, 0, 5.0, 0.0,
                                     "flow_euler", "default", 1.0)
    with pytest.raises(ValueError, match="Wan2.1 model needs"):
        NODES["WanSampler"]().sample(model, [], [], {"samples": torch.zeros(1, 32, 2, 2)}, 0, 2, 5.0, 0.0,
                                     "flow_euler", "default", 1.0)


def _sana_file(paths):
    import os

    from safetensors.torch import save_file
    path = os.path.join(os.path.dirname(paths["transformer"]), "sana_like.safetensors")
    save_file({"t_block.1.weight": torch.zeros(6, 1), "y_embedder.y_proj.fc1.weight": torch.zeros(1, 1)}, path)
    return path
