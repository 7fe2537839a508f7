"""Wan2.1 text-to-video sampling: the guided velocity of WanTransformer3DModel and the whole run."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..controlnet.wan_camera import camera_model_inputs, is_camera_model
from ..controlnet.wan_camera_image import camera_image_inputs
from ..controlnet.wan_vace import vace_model_inputs
from ..loaders.cast_layers import execution_device
from ..vae.wan import to_model_space, to_raw
from .conditioning import conditioning_tensors, expand_latent_to_prompts, repeat_to_batch
from .guidance import Guidance, pipeline_cfg
from .loop import StepCallback, plan_run, sample_flow, start_latent
from .noise import comfy_noise
from .perturbed import SkipLayerGuidance, check_family
from .speed import NO_SPEED, SpeedOptions, SpeedRun, speed_run
from .wan_experts import LowNoiseExpert, check_expert_speed, switch_call, switching_predict
from .wan_image import ImageInputs, image_inputs
from .wan_ti2v import KnownFrames, known_frames


def _embeds(conditioning, name: str, batch: int, width: int) -> torch.Tensor:
    embeds, _ = conditioning_tensors(conditioning, name)
    if embeds.shape[-1] != width:
        raise ValueError(
            f"The {name} conditioning has width {embeds.shape[-1]} but this Wan model expects {width} (UMT5-XXL); "
            "encode the prompt with the Wan text encoder."
        )
    return repeat_to_batch(embeds, batch, name)


def wan_velocity(transformer, positive, negative, cfg: float, latent_shape, guidance: Guidance | None = None,
                 batched: bool = False, speed: SpeedRun = NO_SPEED, frames: KnownFrames | None = None):
    """`predict(x, t, step, total)`: the flow velocity under `guidance` (None: CFG with `cfg`), as WanPipeline
    (WanImageToVideoPipeline for image-to-video models) computes it.

    The reference runs cond and uncond as two forwards (no padding mask: prompts are zero-padded to 512 tokens,
    as the model was trained), which also halves the peak activation memory of a video step; an unguided step runs
    the cond forward alone. Skip-layer guidance adds a third forward, of cond with blocks skipped. `batched` runs
    cond and uncond as one batch instead (faster where memory allows; equal up to float rounding). `speed` gives
    each forward its cache context: "cond" and "uncond" as WanPipeline names them, "cond_uncond" for a batch.
    Each CONDITIONING brings its own image inputs (samplers/wan_image.py), as in ComfyUI.
    """
    guidance = (guidance if guidance is not None else pipeline_cfg(cfg)).for_run()
    check_family(guidance, "wan", len(transformer.blocks))
    device, dtype = execution_device(transformer), transformer.dtype
    cond = _branch(transformer, positive, "positive", latent_shape, device, dtype)
    uncond = _branch(transformer, negative, "negative", latent_shape, device, dtype) if guidance.uses_uncond else None
    vace = vace_model_inputs(transformer, positive, device, dtype)  # a VACE model's control latents, else nothing
    camera = camera_model_inputs(transformer, positive, device, dtype)  # a Fun-Camera model's camera path, if any

    def forward(x: torch.Tensor, timestep: torch.Tensor, branch: _Branch, rows: str) -> torch.Tensor:
        with speed.context(rows):
            extra = {**vace(x), **camera(x)}
            return transformer(timestep=timestep, return_dict=False, **branch.inputs(x), **extra)[0]

    def predict(x: torch.Tensor, t: torch.Tensor, step: int, total: int) -> torch.Tensor:
        if frames is None:
            x_in, timestep = x.to(dtype), t.expand(x.shape[0])
        else:  # TI2V-5B: given frames in the input, a timestep per token (samplers/wan_ti2v.py)
            x_in, timestep = frames.model_input(x).to(dtype), frames.timestep(t, x.shape[0])
        if isinstance(guidance, SkipLayerGuidance):
            out = forward(x_in, timestep, cond, "cond")  # cond, uncond, cond with blocks skipped: the guider's order
            out_uncond = forward(x_in, timestep, uncond, "uncond") if guidance.uses_uncond else None
            skipped = None
            if guidance.perturbs(step, total):
                with guidance.perturbed(transformer):
                    skipped = forward(x_in, timestep, cond, "cond_skip")
            return guidance.combine(out, out_uncond, skipped).float()
        if not guidance.needs_uncond(step, total):
            out, out_uncond = forward(x_in, timestep, cond, "cond"), None
        elif batched:
            out, out_uncond = forward(torch.cat([x_in, x_in]), torch.cat([timestep, timestep]), cond.joined(uncond),
                                      "cond_uncond").chunk(2)
        else:
            out, out_uncond = forward(x_in, timestep, cond, "cond"), forward(x_in, timestep, uncond, "uncond")
        # In the model's dtype, as WanPipeline guides.
        return guidance.combine(out, out_uncond, step, total).float()

    return predict


@dataclass(frozen=True)
class _Branch:
    """One CONDITIONING's forward inputs: prompt embeddings and, for image-to-video models, the image inputs."""

    embeds: torch.Tensor
    image: ImageInputs | None

    def inputs(self, x: torch.Tensor) -> dict:
        if self.image is None:
            return {"hidden_states": x, "encoder_hidden_states": self.embeds}
        return {"hidden_states": self.image.hidden_states(x), "encoder_hidden_states": self.embeds,
                "encoder_hidden_states_image": self.image.image_embeds}

    def joined(self, other: _Branch) -> _Branch:
        """Both branches as one batch (this one first)."""
        image = None
        if self.image is not None:
            embeds = self.image.image_embeds
            image = ImageInputs(torch.cat([self.image.concat, other.image.concat]),
                                None if embeds is None else torch.cat([embeds, other.image.image_embeds]))
        return _Branch(torch.cat([self.embeds, other.embeds]), image)


def _branch(transformer, conditioning, name: str, latent_shape, device, dtype) -> _Branch:
    embeds = _embeds(conditioning, name, latent_shape[0], transformer.config.text_dim).to(device, dtype)
    images = camera_image_inputs if is_camera_model(transformer) else image_inputs
    return _Branch(embeds, images(transformer, conditioning, name, latent_shape, device, dtype))


def check_wan_latent(samples: torch.Tensor, channels: int) -> None:
    if samples.ndim != 5 or samples.shape[1] != channels:
        raise ValueError(
            f"The latent has shape {tuple(samples.shape)}; a Wan2.1 model needs [B, {channels}, (frames-1)/4+1, "
            "H/8, W/8]. Use the Empty Wan Latent Video node or encode frames with the Wan VAE."
        )


def sample_wan(
    transformer,
    latent: dict,
    positive,
    negative,
    seed: int,
    steps: int,
    cfg: float,
    shift: float,
    solver: str,
    schedule: str = "default",
    denoise: float = 1.0,
    callback: StepCallback | None = None,
    guidance: Guidance | None = None,
    sigmas: torch.Tensor | None = None,
    batched: bool = False,
    speed: SpeedOptions | None = None,
    low_noise: LowNoiseExpert | None = None,
) -> torch.Tensor:
    """Sample one LATENT batch of videos; returns raw Wan-VAE latents on the transformer's device (float32).

    `guidance` (a method from samplers.guidance) replaces the plain CFG of `cfg`; `sigmas` (as given, ComfyUI's
    SIGMAS) replace steps, shift, schedule and denoise; `batched` runs cond and uncond in one forward; `speed`
    (samplers.speed) applies for this run only. `low_noise`: Wan2.2 A14B's second expert, which takes over below
    its boundary (samplers/wan_experts.py); `transformer` is then the high-noise expert.
    """
    samples = expand_latent_to_prompts(latent["samples"], positive)
    check_wan_latent(samples, transformer.config.out_channels)
    device = execution_device(transformer)
    noise = comfy_noise(tuple(samples.shape), seed, latent.get("batch_index")).to(device)
    scheduler, plan = plan_run(solver, shift, steps, denoise, device, schedule, sigmas)
    model_space = to_model_space(samples.to(device, torch.float32))
    frames = known_frames(transformer, latent, model_space)
    x = start_latent(plan, noise, model_space)
    with contextlib.ExitStack() as stack:

        def velocity(model, scale: float, options: SpeedOptions | None, start: int = 0):
            run = stack.enter_context(speed_run(model, options, "wan", len(plan.timesteps)))
            return run.track(wan_velocity(model, positive, negative, scale, samples.shape, guidance, batched, run,
                                          frames), plan, start)

        if low_noise is not None:
            check_expert_speed(speed, low_noise)
        predict = velocity(transformer, cfg, speed)
        if low_noise is not None:
            start = switch_call(plan.timesteps, low_noise.boundary_ratio)
            predict = switching_predict(predict, lambda: velocity(low_noise.load(), low_noise.cfg, low_noise.speed,
                                                                  start), low_noise.boundary_ratio)
        x = sample_flow(predict, scheduler, plan, x, callback)
        return to_raw(x if frames is None else frames.model_input(x))


def batch_cond_uncond(device: torch.device, model_bytes: int, one_pass: int, device_memory: int) -> bool:
    """Whether cond and uncond run as one batch (faster on a GPU) rather than as two forwards (WanPipeline's way,
    half the activations): on a GPU whose memory is at least twice the weights and both passes' activations; never on
    the CPU, where one batch of two is about as fast as two forwards.

    A function of the model, the latent and the device alone, never of the memory free at the moment: the two ways
    round differently (batched matmuls), so the same inputs must always take the same one.
    """
    return device.type != "cpu" and model_bytes + 2 * one_pass <= device_memory // 2


def wan_memory_estimate(transformer, latent_shape) -> int:
    """Bytes of activations for one forward: the FFN hidden state of every token, plus attention inputs, x2."""
    config = transformer.config
    patch = config.patch_size
    tokens = latent_shape[0] * latent_shape[2] * (latent_shape[3] // patch[1]) * (latent_shape[4] // patch[2])
    width = config.num_attention_heads * config.attention_head_dim
    element = torch.finfo(transformer.dtype).bits // 8
    return int(tokens * (config.ffn_dim + 4 * width) * element * 2)
