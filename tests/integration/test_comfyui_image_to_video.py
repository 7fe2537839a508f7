"""Wan2.1 image-to-video (I2V) and first-last-frame (FLF2V) in a real ComfyUI: the pack's chain (Load CLIP Vision
(Wan) -> Wan CLIP Vision Encode -> Wan Image to Video -> Wan Sampler) equals the native one (CLIPVisionLoader ->
CLIPVisionEncode -> WanImageToVideo / WanFirstLastFrameToVideo -> ModelSamplingSD3 -> KSampler(euler, simple)) on the
same files, image and seed; native conditioning samples the same under the Wan Sampler, and the pack's under the core
KSampler through Wan Model to MODEL.

CLIP ViT-H and the Wan VAE are random weights at their real sizes (native loaders build only the released sizes);
the transformers are tiny, with the real text and CLIP widths native ComfyUI hard-codes. The 48 x 32 input image is
resized for CLIP (224 x 224), so the CLIP preprocessing is compared too.
"""

import os

from conftest import NATIVE_RELATIVE, REAL_SIZE_CLIP_VISION, REAL_SIZE_WAN_VAE, assert_native_close
from safetensors.torch import load_file
from sample_media import INPUT_IMAGE
from tiny_models import WAN_FILES, WAN_I2V_FILES

WIDTH, HEIGHT, FRAMES = 48, 32, 9
SEED, STEPS, CFG, SHIFT = 5, 3, 5.0, 5.0


def _node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def _graph(variant: str) -> dict:
    first_last = variant == "flf2v"
    size = dict(width=WIDTH, height=HEIGHT, length=FRAMES, batch_size=1)
    graph = {
        "te": _node("WanTextEncoderLoader", model_name=WAN_FILES["text_encoder"], dtype="fp32"),
        "enc": _node("WanTextEncode", text_encoder=["te", 0], prompt="a kite rises over the dunes",
                     negative_prompt="blurry", batch_prompts=False),
        "image": _node("LoadImage", image=INPUT_IMAGE),
        "end": _node("ImageInvert", image=["image", 0]),
        # native
        "n_clip": _node("CLIPVisionLoader", clip_name=REAL_SIZE_CLIP_VISION),
        "n_start": _node("CLIPVisionEncode", clip_vision=["n_clip", 0], image=["image", 0], crop="center"),
        "n_end": _node("CLIPVisionEncode", clip_vision=["n_clip", 0], image=["end", 0], crop="center"),
        "n_vae": _node("VAELoader", vae_name=REAL_SIZE_WAN_VAE),
        "n_unet": _node("UNETLoader", unet_name=WAN_I2V_FILES[variant], weight_dtype="default"),
        "n_shift": _node("ModelSamplingSD3", model=["n_unet", 0], shift=SHIFT),
        # the pack
        "clip": _node("WanCLIPVisionLoader", clip_name=REAL_SIZE_CLIP_VISION, dtype="fp32"),
        "start_features": _node("WanCLIPVisionEncode", clip_vision=["clip", 0], image=["image", 0], crop="center"),
        "end_features": _node("WanCLIPVisionEncode", clip_vision=["clip", 0], image=["end", 0], crop="center"),
        "vae": _node("WanVAELoader", vae_name=REAL_SIZE_WAN_VAE, dtype="fp32"),
        "wan": _node("WanTransformerLoader", model_name=WAN_I2V_FILES[variant], dtype="fp32"),
        "adapter": _node("WanModelToMODEL", model=["wan", 0]),
        "adapter_shift": _node("ModelSamplingSD3", model=["adapter", 0], shift=SHIFT),
        "cond": _node("WanImageToVideoConditioning", positive=["enc", 0], negative=["enc", 1], vae=["vae", 0],
                      **size, start_image=["image", 0], clip_vision_start_image=["start_features", 0],
                      **({"end_image": ["end", 0], "clip_vision_end_image": ["end_features", 0]} if first_last else {})),
    }
    if first_last:
        graph["n_cond"] = _node("WanFirstLastFrameToVideo", positive=["enc", 0], negative=["enc", 1],
                                vae=["n_vae", 0], **size, start_image=["image", 0], end_image=["end", 0],
                                clip_vision_start_image=["n_start", 0], clip_vision_end_image=["n_end", 0])
    else:
        graph["n_cond"] = _node("WanImageToVideo", positive=["enc", 0], negative=["enc", 1], vae=["n_vae", 0],
                                **size, start_image=["image", 0], clip_vision_output=["n_start", 0])

    def ksampler(model: str, cond: str) -> dict:
        return _node("KSampler", model=[model, 0], positive=[cond, 0], negative=[cond, 1], latent_image=[cond, 2],
                     seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="simple", denoise=1.0)

    def ours(cond: str) -> dict:
        return _node("WanSampler", model=["wan", 0], positive=[cond, 0], negative=[cond, 1], latent=[cond, 2],
                     seed=SEED, steps=STEPS, cfg=CFG, shift=SHIFT, solver="flow_euler", schedule="simple",
                     denoise=1.0)

    graph.update({
        "native": ksampler("n_shift", "n_cond"),  # all native
        "ours": ours("cond"),  # all the pack's
        "ours_on_native_cond": ours("n_cond"),  # native CLIP and conditioning, the pack's sampler
        "adapter_on_our_cond": ksampler("adapter_shift", "cond"),  # the pack's conditioning, the core KSampler
    })
    for name in ("native", "ours", "ours_on_native_cond", "adapter_on_our_cond"):
        graph[f"save_{name}"] = _node("SaveLatent", samples=[name, 0], filename_prefix=f"i2v/{variant}_{name}")
    return graph


def _latent(server, entry, node: str):
    item = entry["outputs"][node]["latents"][0]
    return load_file(os.path.join(server.output_dir, item["subfolder"], item["filename"]))["latent_tensor"]


def _check(server, variant: str):
    entry = server.run_prompt(_graph(variant), timeout=900)
    latents = {name: _latent(server, entry, f"save_{name}")
               for name in ("native", "ours", "ours_on_native_cond", "adapter_on_our_cond")}
    assert latents["native"].shape == (1, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)
    assert latents["native"].std() > 0.05
    for name in ("ours", "ours_on_native_cond", "adapter_on_our_cond"):
        print(name, end=": ")
        assert_native_close(latents[name], latents["native"], NATIVE_RELATIVE)


def test_image_to_video_equals_native_comfyui(comfy_server):
    _check(comfy_server, "i2v")


def test_first_last_frame_equals_native_comfyui(comfy_server):
    _check(comfy_server, "flf2v")
