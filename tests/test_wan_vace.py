"""Wan2.1 VACE through the pack's nodes equals diffusers' WanVACEPipeline on the same tiny weights.

Load Wan2.1 Transformer (a VACE file in the Comfy-Org layout) + Wan VACE Conditioning + Wan Sampler, the reference
frames trimmed as ComfyUI's TrimVideoLatent does, Wan VAE Decode; against the pipeline given the same pictures as
PIL images (video frames, "L" masks, reference images), a generator seeded with the seed, the same scheduler.
Cases: a control video (mask of ones), inpainting (a white box to repaint over the video), first-last frame (the
pipeline's own example: the two frames kept, grey frames to generate between), reference images (no video).
"""

import numpy as np
import pytest
import torch
from diffusers import WanPipeline, WanVACEPipeline
from PIL import Image
from sample_media import as_image_batch, moving_frames
from tiny_models import tiny_wan_set, write_wan_files
from tiny_wan import tiny_wan_transformer, write_wan_layouts
from tiny_wan_vace import TINY_VACE_CONFIG, tiny_vace_transformer, vace_diffusers_to_original, write_vace_layouts

import sana_wan
from sana_wan.loaders.meta_build import key_mismatch
from sana_wan.loaders.wan_transformer import convert_original_to_diffusers, wan_config_from_shapes
from sana_wan.samplers.schedulers import make_scheduler
from sana_wan.samplers.wan import sample_wan

NODES = sana_wan.NODE_CLASS_MAPPINGS
PROMPT = "a fox runs through the snow"
NEGATIVE = "blurry, static"
WIDTH, HEIGHT, FRAMES, SEED, SHIFT, CFG, STEPS = 32, 32, 5, 11, 8.0, 5.0, 2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    models = tiny_wan_set()
    directory = str(tmp_path_factory.mktemp("wan_vace_models"))
    paths = write_wan_files(models, directory)  # text encoder and VAE; the plain transformer is replaced:
    models["transformer"] = tiny_vace_transformer(seed=5, text_dim=models["umt5"].config.d_model)
    paths["transformer"] = write_vace_layouts(models["transformer"], directory)["comfy_prefixed"]
    (model,) = NODES["WanTransformerLoader"]().load(paths["transformer"], "fp32")
    (encoder,) = NODES["WanTextEncoderLoader"]().load(paths["text_encoder"], "fp32")
    (vae,) = NODES["WanVAELoader"]().load(paths["vae"], "fp32")
    models["nodes"] = (model, vae, *NODES["WanTextEncode"]().encode(encoder, PROMPT, NEGATIVE, False))
    return models


def _box_masks(frames: int, box: tuple[int, int, int, int]) -> list[Image.Image]:
    """White (generate) inside `box` (left, top, right, bottom), black elsewhere, on every frame."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[box[1]:box[3], box[0]:box[2]] = 255
    return [Image.fromarray(mask) for _ in range(frames)]


def _first_last(frames: list[Image.Image]) -> tuple[list[Image.Image], list[Image.Image]]:
    """WanVACEPipeline's example `prepare_video_and_mask`: the first and last frames kept, grey frames between."""
    grey = Image.new("RGB", (WIDTH, HEIGHT), (128, 128, 128))
    black, white = Image.new("L", (WIDTH, HEIGHT), 0), Image.new("L", (WIDTH, HEIGHT), 255)
    video = [frames[0], *[grey] * (FRAMES - 2), frames[-1]]
    return video, [black, *[white] * (FRAMES - 2), black]


def _references() -> list[Image.Image]:
    """Two references (one IMAGE batch: one size) of another shape than the video (sides multiples of 8: diffusers
    snaps other sizes down to one first, with PIL)."""
    return [moving_frames(40, 24, 1, seed=4)[0], moving_frames(40, 24, 1, seed=5)[0]]


def _case(name: str) -> dict:
    frames = moving_frames(WIDTH, HEIGHT, FRAMES)
    if name == "control_video":
        return {"video": frames, "strength": 0.8}
    if name == "inpainting":
        return {"video": frames, "mask": _box_masks(FRAMES, (8, 8, 24, 24)), "strength": 1.0}
    if name == "first_last_frame":
        video, mask = _first_last(frames)
        return {"video": video, "mask": mask, "strength": 1.0}
    return {"reference_images": _references(), "strength": 1.0}


def _as_mask(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) / 255.0 for i in images]))


def _run_nodes(models, case: dict) -> torch.Tensor:
    model, vae, positive, negative = models["nodes"]
    video, mask, references = case.get("video"), case.get("mask"), case.get("reference_images")
    positive, negative, latent, trim = NODES["WanVACEConditioning"]().apply(
        positive, negative, vae, WIDTH, HEIGHT, FRAMES, 1, case["strength"],
        control_video=None if video is None else as_image_batch(video),
        control_masks=None if mask is None else _as_mask(mask),
        reference_image=None if references is None else torch.cat([as_image_batch([r]) for r in references]))
    (samples,) = NODES["WanSampler"]().sample(model, positive, negative, latent, SEED, STEPS, CFG, SHIFT,
                                              "flow_unipc", "default", 1.0)
    trimmed = {"samples": samples["samples"][:, :, trim:]}  # ComfyUI's TrimVideoLatent
    return NODES["WanVAEDecode"]().decode(vae, trimmed, "off", 256, 64)[0]


def _run_reference(models, case: dict) -> torch.Tensor:
    components = {"tokenizer": models["tokenizer"], "text_encoder": models["umt5"], "vae": models["vae"],
                  "scheduler": make_scheduler("flow_unipc", SHIFT)}
    pipe = WanVACEPipeline(**components, transformer=models["transformer"])
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        # WanPipeline's prompt encoding (the same code): the VACE pipeline's own calls ftfy unguarded, an optional
        # package this environment does not have.
        embeds, negative_embeds = WanPipeline(**components, transformer=None).encode_prompt(
            PROMPT, NEGATIVE, max_sequence_length=512)
        video = pipe(video=case.get("video"), mask=case.get("mask"), reference_images=case.get("reference_images"),
                     conditioning_scale=case["strength"], prompt_embeds=embeds, negative_prompt_embeds=negative_embeds,
                     height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=CFG,
                     generator=torch.Generator().manual_seed(SEED), output_type="pt").frames
    return video[0].permute(0, 2, 3, 1)


@pytest.mark.parametrize("name", ["control_video", "inpainting", "first_last_frame", "reference_images"])
def test_nodes_equal_wan_vace_pipeline(models, name):
    case = _case(name)
    ours = _run_nodes(models, case)
    reference = _run_reference(models, case)
    assert ours.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert (ours - reference).abs().max() <= 1e-4
    assert ours.std() > 0.01, "a flat video would make the comparison meaningless"


def test_the_conditioning_layout(models):
    """Reference frames first (the last reference given first), a zero reactive half and zero mask there."""
    _, vae, positive, negative = models["nodes"]
    references = torch.cat([as_image_batch([r]) for r in _references()])
    vace_positive, vace_negative, latent, trim = NODES["WanVACEConditioning"]().apply(
        positive, negative, vae, WIDTH, HEIGHT, FRAMES, 2, 1.0, reference_image=references)
    context = vace_positive[0][1]["wan_vace"]
    assert trim == 2 and latent["samples"].shape == (2, 16, 2 + (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)
    assert context.latents.shape == (1, 96, 2 + (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)
    assert torch.all(context.latents[0, 16:, :2] == 0)
    assert vace_negative[0][1]["wan_vace"] is context and "wan_vace" not in positive[0][1], "inputs are not changed"


def test_bad_inputs_are_clear_errors(models):
    model, vae, positive, negative = models["nodes"]
    node = NODES["WanVACEConditioning"]()
    frames = as_image_batch(moving_frames(WIDTH, HEIGHT, FRAMES))
    masks = _as_mask(_box_masks(FRAMES, (0, 0, 16, 16)))
    bad = [
        ({"control_video": frames[:3]}, "control_video has 3 frames but length is 5"),
        ({"control_video": frames, "control_masks": masks[:4]}, "control_masks has 4 frames but length is 5"),
        ({"control_video": frames[:, :16]}, "control_video is 32x16 but the video is 32x32"),
        ({"control_masks": masks[:, :, :16]}, "control_masks is 16x32 but the video is 32x32"),
        ({"reference_image": frames[0]}, "reference_image must be an IMAGE"),
    ]
    for inputs, message in bad:
        with pytest.raises(ValueError, match=message):
            node.apply(positive, negative, vae, WIDTH, HEIGHT, FRAMES, 1, 1.0, **inputs)
    assert "4n+1" in NODES["WanVACEConditioning"].VALIDATE_INPUTS(WIDTH, HEIGHT, 8)
    with pytest.raises(ValueError, match="connect a Wan VACE Conditioning"):
        NODES["WanSampler"]().sample(model, positive, negative, {"samples": torch.zeros(1, 16, 2, 4, 4)}, SEED, 1,
                                     CFG, SHIFT, "flow_euler", "default", 1.0)
    vace_positive, vace_negative, latent, _ = node.apply(positive, negative, vae, WIDTH, HEIGHT, FRAMES, 1, 1.0)
    with pytest.raises(ValueError, match="sample the latent output of the Wan VACE Conditioning"):
        NODES["WanSampler"]().sample(model, vace_positive, vace_negative, {"samples": torch.zeros(1, 16, 1, 4, 4)},
                                     SEED, 1, CFG, SHIFT, "flow_euler", "default", 1.0)


def test_a_plain_model_refuses_vace_conditioning(models, tmp_path):
    _, vae, positive, negative = models["nodes"]
    plain = tiny_wan_transformer(seed=5, text_dim=models["umt5"].config.d_model)
    (handle,) = NODES["WanTransformerLoader"]().load(write_wan_layouts(plain, str(tmp_path))["comfy_prefixed"], "fp32")
    vace_positive, vace_negative, latent, _ = NODES["WanVACEConditioning"]().apply(positive, negative, vae, WIDTH,
                                                                                   HEIGHT, FRAMES, 1, 1.0)
    with pytest.raises(ValueError, match="not a VACE model"):
        NODES["WanSampler"]().sample(handle, vace_positive, vace_negative, latent, SEED, 1, CFG, SHIFT, "flow_euler",
                                     "default", 1.0)


def test_real_size_vace_layouts_map_onto_the_model():
    """Wan2.1-VACE-1.3B and -14B as released (original names), built on the meta device: the config the loader
    infers from the shapes is the diffusers repos' config, and every key maps onto the model."""
    from diffusers import WanVACETransformer3DModel
    sizes = {"1.3B": (12, 8960, 30, list(range(0, 30, 2))), "14B": (40, 13824, 40, list(range(0, 40, 5)))}
    for name, (heads, ffn, layers, vace_layers) in sizes.items():
        config = {**TINY_VACE_CONFIG, "num_attention_heads": heads, "ffn_dim": ffn, "num_layers": layers,
                  "vace_layers": vace_layers, "text_dim": 4096}
        with torch.device("meta"):
            model = WanVACETransformer3DModel(**config)
        original = vace_diffusers_to_original(model.state_dict())
        inferred = wan_config_from_shapes({k: tuple(v.shape) for k, v in original.items()})
        assert {k: inferred[k] for k in config} == {**config, "patch_size": tuple(config["patch_size"])}, name
        converted = {k: tuple(v.shape) for k, v in convert_original_to_diffusers(original).items()}
        assert key_mismatch(model, converted) == ([], [], []), name


def test_cond_and_uncond_in_one_batch_equal_two_forwards(models):
    """The sampler's batched mode (when memory allows) gives the VACE context to both halves of the batch."""
    model, vae, positive, negative = models["nodes"]
    frames = as_image_batch(moving_frames(WIDTH, HEIGHT, FRAMES))
    vace_positive, vace_negative, latent, _ = NODES["WanVACEConditioning"]().apply(
        positive, negative, vae, WIDTH, HEIGHT, FRAMES, 1, 1.0, control_video=frames)
    with torch.no_grad():
        runs = [sample_wan(model.module, latent, vace_positive, vace_negative, SEED, 2, CFG, SHIFT, "flow_euler",
                           batched=batched) for batched in (False, True)]
    assert (runs[0] - runs[1]).abs().max() <= 1e-5 * runs[0].abs().max()  # raw latents, up to ~5 here
