"""Wan2.1 image-to-video (I2V) and first-last-frame (FLF2V) through the pack's nodes equal diffusers'
WanImageToVideoPipeline on the same tiny weights, images and noise.

Models are written in the Comfy-Org layouts and loaded back by the loader nodes; the pipeline gets the in-memory
source models and the images as PIL (8-bit, at the video's size, so its own resizing leaves them as they are). At
224 x 224 the pipeline runs its own CLIP preprocessing (CLIPImageProcessor), which then leaves the image as it is
too; at other sizes it is given the pack's CLIP features (`image_embeds`): CLIP resizing is ComfyUI's here
(tests/integration/test_comfyui_image_to_video.py compares it with ComfyUI's CLIP Vision Encode).
"""

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from PIL import Image
from tiny_clip_vision import clip_image_processor, tiny_clip_vision, write_clip_layouts
from tiny_models import tiny_wan_set, write_wan_files
from tiny_wan import tiny_wan_transformer, write_wan_layouts

import sana_wan
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.schedulers import make_scheduler
from sana_wan.vae.wan import to_raw

NODES = sana_wan.NODE_CLASS_MAPPINGS
PROMPTS = ["a red kite over the dunes", "a lighthouse in a storm"]
NEGATIVE = "blurry, static"
FRAMES, SEED, SHIFT, STEPS, CFG = 5, 7, 5.0, 4, 5.0
CLIP_WIDTH = 64
# measured: latents bit-identical (0) in every case; frames 0, 2.2e-6 for two prompts (values 0..1)
FRAMES_TOLERANCE, LATENT_TOLERANCE = 1e-4, 1e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("wan_i2v"))
    models = tiny_wan_set()
    models["paths"] = write_wan_files(models, directory)
    models["clip"] = tiny_clip_vision(seed=8, hidden_size=CLIP_WIDTH)
    models["paths"]["clip"] = write_clip_layouts(models["clip"], directory + "/clip")["comfy_safetensors"]
    for variant in ("i2v", "flf2v"):
        models[variant] = tiny_wan_transformer(variant, seed=9, text_dim=64, image_dim=CLIP_WIDTH)
        models["paths"][variant] = write_wan_layouts(models[variant], f"{directory}/{variant}")["comfy_prefixed"]
    return models


def _image(width: int, height: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    smooth = torch.rand(1, 3, height // 8 + 1, width // 8 + 1, generator=generator)
    image = torch.nn.functional.interpolate(smooth, size=(height, width), mode="bilinear").movedim(1, -1)
    return (image * 255).round() / 255  # 8-bit, as Load Image gives


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))


def _run_nodes(models, variant, width, height, start, end, prompts, solver):
    paths = models["paths"]
    (model,) = NODES["WanTransformerLoader"]().load(paths[variant], "fp32")
    (encoder,) = NODES["WanTextEncoderLoader"]().load(paths["text_encoder"], "fp32")
    (vae,) = NODES["WanVAELoader"]().load(paths["vae"], "fp32")
    (clip,) = NODES["WanCLIPVisionLoader"]().load(paths["clip"], "fp32")
    positive, negative = NODES["WanTextEncode"]().encode(encoder, "\n".join(prompts), NEGATIVE, len(prompts) > 1)
    encode = NODES["WanCLIPVisionEncode"]()
    clip_start = encode.encode(clip, start, "center")[0]
    clip_end = None if end is None else encode.encode(clip, end, "center")[0]
    positive, negative, latent = NODES["WanImageToVideoConditioning"]().apply(
        positive, negative, vae, width, height, FRAMES, 1, start, end, clip_start, clip_end)
    (samples,) = NODES["WanSampler"]().sample(model, positive, negative, latent, SEED, STEPS, CFG, SHIFT, solver,
                                              "default", 1.0)
    frames, _ = NODES["WanVAEDecode"]().decode(vae, samples, "off", 256, 64)
    features = [clip_start.penultimate_hidden_states] + ([] if clip_end is None else [clip_end.penultimate_hidden_states])
    return samples, frames, torch.cat(features)


def _run_reference(models, variant, width, height, start, end, prompts, solver, features):
    pipe = WanImageToVideoPipeline(
        tokenizer=models["tokenizer"], text_encoder=models["umt5"], image_encoder=models["clip"],
        image_processor=clip_image_processor(), transformer=models[variant], vae=models["vae"],
        scheduler=make_scheduler(solver, SHIFT))
    pipe.set_progress_bar_config(disable=True)
    if features is not None:  # the pack's CLIP features in place of the pipeline's own (see the module docstring)
        pipe.encode_image = lambda image, device=None: features
    noise = comfy_noise((len(prompts), 16, (FRAMES - 1) // 4 + 1, height // 8, width // 8), SEED)
    with torch.no_grad():
        # WanPipeline's prompt encoding (the same code): the I2V pipeline's own calls ftfy unguarded, an optional
        # package this environment does not have.
        embeds, negative_embeds = WanPipeline(tokenizer=models["tokenizer"], text_encoder=models["umt5"],
                                              transformer=None, vae=None, scheduler=None).encode_prompt(
            prompts, [NEGATIVE] * len(prompts), max_sequence_length=512)
        kwargs = dict(image=_pil(start), last_image=None if end is None else _pil(end), prompt_embeds=embeds,
                      negative_prompt_embeds=negative_embeds, height=height, width=width, num_frames=FRAMES,
                      num_inference_steps=STEPS, guidance_scale=CFG)
        final = {}

        def keep_latents(pipe, step, timestep, tensors):
            final["latents"] = tensors["latents"]
            return tensors

        video = pipe(**kwargs, latents=noise.clone(), output_type="pt", callback_on_step_end=keep_latents).frames
    return to_raw(final["latents"]), torch.cat([v.permute(0, 2, 3, 1) for v in video])


CASES = {  # variant, width, height, end image, prompts, solver, pipeline computes CLIP itself
    "i2v_square_own_clip": ("i2v", 224, 224, False, PROMPTS[:1], "flow_unipc", True),
    "i2v_non_square": ("i2v", 64, 48, False, PROMPTS[:1], "flow_euler", False),
    "i2v_two_prompts": ("i2v", 48, 64, False, PROMPTS, "flow_unipc", False),
    "flf2v_square_own_clip": ("flf2v", 224, 224, True, PROMPTS[:1], "flow_euler", True),
    "flf2v_non_square": ("flf2v", 64, 48, True, PROMPTS[:1], "flow_unipc", False),
}


@pytest.mark.parametrize("case", CASES)
def test_nodes_equal_wan_image_to_video_pipeline(models, case):
    variant, width, height, with_end, prompts, solver, own_clip = CASES[case]
    start = _image(width, height, 1)
    end = _image(width, height, 2) if with_end else None
    samples, frames, features = _run_nodes(models, variant, width, height, start, end, prompts, solver)
    reference_latents, reference_frames = _run_reference(models, variant, width, height, start, end, prompts, solver,
                                                         None if own_clip else features)
    assert samples["samples"].shape == reference_latents.shape
    assert frames.shape == reference_frames.shape == (len(prompts) * FRAMES, height, width, 3)
    latent_delta = (samples["samples"] - reference_latents).abs().max().item()
    frame_delta = (frames - reference_frames).abs().max().item()
    print(f"{case}: latents max|Δ| {latent_delta:.3g} ({latent_delta / reference_latents.abs().max().item():.3g} of "
          f"the largest), frames {frame_delta:.3g}")
    assert latent_delta <= LATENT_TOLERANCE and frame_delta <= FRAMES_TOLERANCE
    assert frames.std() > 0.01, "a flat video would make the comparison meaningless"


def _conditioned(models, variant, start, end, clip_start, clip_end, width=64, height=48):
    (encoder,) = NODES["WanTextEncoderLoader"]().load(models["paths"]["text_encoder"], "fp32")
    (vae,) = NODES["WanVAELoader"]().load(models["paths"]["vae"], "fp32")
    positive, negative = NODES["WanTextEncode"]().encode(encoder, PROMPTS[0], NEGATIVE, False)
    if start is None and end is None:
        (latent,) = NODES["EmptyWanLatentVideo"]().generate(width, height, FRAMES, 1)
        return positive, negative, latent
    return NODES["WanImageToVideoConditioning"]().apply(positive, negative, vae, width, height, FRAMES, 1, start, end,
                                                        clip_start, clip_end)


def _sample(models, variant, conditioned):
    path = models["paths"][variant] if variant != "t2v" else models["paths"]["transformer"]
    (model,) = NODES["WanTransformerLoader"]().load(path, "fp32")
    positive, negative, latent = conditioned
    return NODES["WanSampler"]().sample(model, positive, negative, latent, SEED, 2, CFG, SHIFT, "flow_euler",
                                        "default", 1.0)[0]["samples"]


def _clip(models, image):
    (clip,) = NODES["WanCLIPVisionLoader"]().load(models["paths"]["clip"], "fp32")
    return NODES["WanCLIPVisionEncode"]().encode(clip, image, "center")[0]


@pytest.mark.parametrize(("variant", "inputs", "message"), [
    ("i2v", "start_end", "end frame but this is a Wan image-to-video \\(I2V\\) model.*FLF2V"),
    ("i2v", "none", "image-to-video model and the positive conditioning has no image"),
    ("t2v", "start", "carries an image but this is a Wan text-to-video model"),
    ("i2v", "start_without_clip", "reads CLIP image features and the positive conditioning has none"),
    ("flf2v", "start_end_one_clip", "reads the CLIP features of the start and the end image"),
])
def test_model_and_images_that_do_not_fit_are_clear_errors(models, variant, inputs, message):
    start, end = _image(64, 48, 1), _image(64, 48, 2)
    clip_start = _clip(models, start)
    given = {"start_end": (start, end, clip_start, _clip(models, end)), "none": (None, None, None, None),
             "start": (start, None, clip_start, None), "start_without_clip": (start, None, None, None),
             "start_end_one_clip": (start, end, clip_start, None)}[inputs]
    with pytest.raises(ValueError, match=message):
        _sample(models, variant, _conditioned(models, variant, *given))


def test_native_wan_image_to_video_conditioning_samples_the_same(models):
    """ComfyUI's WanImageToVideo marks the given latent frames in a one-channel mask [1, 1, T, h, w] (its
    execute(): mask[:, :, :((frames - 1) // 4) + 1] = 0); the pack's node writes four channels. Same samples."""
    start = _image(64, 48, 1)
    positive, negative, latent = _conditioned(models, "i2v", start, None, _clip(models, start), None)
    ours = _sample(models, "i2v", (positive, negative, latent))
    mask = torch.ones(1, 1, latent["samples"].shape[2], 6, 8)
    mask[:, :, :1] = 0.0

    def native(conditioning):
        return [[embeds, {**extras, "concat_mask": mask}] for embeds, extras in conditioning]

    assert torch.equal(_sample(models, "i2v", (native(positive), native(negative), latent)), ours)


def test_an_image_of_another_size_is_cropped_and_resized_as_comfyui():
    from sana_wan.samplers.wan_image import conditioning_video
    wide = _image(128, 48, 3)  # 8:3 into 4:3: the middle 64 columns
    video, given = conditioning_video(64, 48, FRAMES, wide, None)
    assert torch.equal(video[0], wide[0, :, 32:96])
    assert given.tolist() == [True] + [False] * (FRAMES - 1)
    assert torch.equal(video[1:], torch.full((FRAMES - 1, 48, 64, 3), 0.5))
    small = conditioning_video(64, 48, FRAMES, _image(32, 24, 4), None)[0][0]
    assert small.shape == (48, 64, 3) and not torch.equal(small, torch.full_like(small, 0.5))


def test_bad_node_inputs_are_clear_errors(models):
    node = NODES["WanImageToVideoConditioning"]
    assert "4n+1" in node.VALIDATE_INPUTS(832, 480, 80, 1)
    with pytest.raises(ValueError, match="Give a start_image"):
        node().apply([], [], None, 64, 48, FRAMES, 1)
    (vae,) = NODES["WanVAELoader"]().load(models["paths"]["vae"], "fp32")
    with pytest.raises(ValueError, match="start_image contains NaN"):
        node().apply([], [], vae, 64, 48, FRAMES, 1, torch.full((1, 48, 64, 3), float("nan")))
    with pytest.raises(ValueError, match="overlap"):
        node().apply([], [], vae, 64, 48, FRAMES, 1, _image(64, 48, 1).repeat(3, 1, 1, 1),
                     _image(64, 48, 2).repeat(3, 1, 1, 1))


def test_default_shift_follows_wan_for_image_to_video(models):
    """shift 0 is the model's default: image-to-video at 832x480 and below samples at 3.0 (Wan's generate.py)."""
    start = _image(64, 48, 1)
    positive, negative, latent = _conditioned(models, "i2v", start, None, _clip(models, start), None)
    (model,) = NODES["WanTransformerLoader"]().load(models["paths"]["i2v"], "fp32")

    def sample(shift):
        return NODES["WanSampler"]().sample(model, positive, negative, latent, SEED, 2, CFG, shift, "flow_euler",
                                            "default", 1.0)[0]["samples"]

    default = sample(0.0)
    assert torch.equal(default, sample(3.0)) and not torch.equal(default, sample(5.0))


def test_lora_batched_guidance_speed_and_fp8_storage_work_with_image_to_video(models, tmp_path):
    """The sampler's other inputs on an I2V model: a LoRA on every attention layer, the image layers included,
    equals the merged weights; cond and uncond in one batch equal two forwards; skip-layer guidance, APG and a cache
    at threshold 0 run on the image inputs; fp8 weight storage stays close to the full-precision run."""
    import copy

    from safetensors.torch import save_file
    from tiny_lora import WAN_LAYERS, make_lora, peft

    from sana_wan.samplers.speed import SpeedOptions
    start = _image(64, 48, 1)
    conditioned = _conditioned(models, "i2v", start, None, _clip(models, start), None)
    (model,) = NODES["WanTransformerLoader"]().load(models["paths"]["i2v"], "fp32")

    def sample(handle, guidance=None, batched=False, speed=None):
        from sana_wan.samplers.wan import sample_wan
        positive, negative, latent = conditioned
        with torch.inference_mode():
            return sample_wan(handle.load(), latent, positive, negative, SEED, 3, CFG, SHIFT, "flow_unipc",
                              guidance=guidance, batched=batched, speed=speed).cpu()

    plain = sample(model)
    lora = make_lora(models["i2v"], WAN_LAYERS + ("attn2.add_k_proj", "attn2.add_v_proj"), seed=3)
    save_file(peft(lora), str(tmp_path / "i2v_lora.safetensors"))
    (patched,) = NODES["WanLoraLoader"]().load(model, str(tmp_path / "i2v_lora.safetensors"), 0.7)
    merged = copy.deepcopy(models["i2v"])
    with torch.no_grad():
        parameters = dict(merged.named_parameters())
        for layer, (down, up) in lora.items():
            parameters[layer + ".weight"] += 0.7 * (up.flatten(1) @ down.flatten(1)).view_as(parameters[layer + ".weight"])
    from sana_wan import comfy_bridge as bridge
    reference = sample(bridge.ModelHandle(merged, "diffusion"))
    assert (sample(patched) - reference).abs().max() <= 1e-5 * reference.abs().max()
    assert (reference - plain).abs().max() > 1e-3, "the LoRA changes the video"
    assert (sample(model, batched=True) - plain).abs().max() <= 1e-5 * plain.abs().max()
    skip = NODES["GuidanceSkipLayer"]().build(3.0, "1", CFG, 0.0, 1.0)[0]
    apg = NODES["GuidanceAPG"]().build(CFG, 0.0, 0.0, 0.0, 0.0, 1.0)[0]
    for guided in (sample(model, skip), sample(model, apg)):
        assert torch.isfinite(guided).all() and (guided - plain).abs().max() > 1e-4
    assert torch.equal(sample(model, speed=SpeedOptions(cache="first_block", threshold=0.0)), plain)
    (fp8,) = NODES["WanTransformerLoader"]().load(models["paths"]["i2v"], "fp32", "fp8_e4m3fn")
    assert 0 < (sample(fp8) - plain).abs().max() <= 0.05 * plain.abs().max()


def test_a_batch_of_two_videos_from_one_image(models):
    """batch_size 2: each video gets its own noise (ComfyUI's: the first is the batch-of-one video) and the same
    image conditioning."""
    start = _image(64, 48, 1)
    (encoder,) = NODES["WanTextEncoderLoader"]().load(models["paths"]["text_encoder"], "fp32")
    (vae,) = NODES["WanVAELoader"]().load(models["paths"]["vae"], "fp32")
    positive, negative = NODES["WanTextEncode"]().encode(encoder, PROMPTS[0], NEGATIVE, False)
    node, clip = NODES["WanImageToVideoConditioning"](), _clip(models, start)
    single = node.apply(positive, negative, vae, 64, 48, FRAMES, 1, start, None, clip, None)
    pair = node.apply(positive, negative, vae, 64, 48, FRAMES, 2, start, None, clip, None)
    assert pair[2]["samples"].shape[0] == 2
    one, two = _sample(models, "i2v", single), _sample(models, "i2v", pair)
    assert (two[:1] - one).abs().max() <= 1e-5 * one.abs().max()
    assert (two[1] - two[0]).abs().max() > 1e-2
