"""Perturbation guidance: an extra forward of a weakened model, and guidance away from its prediction.

Each method belongs to one family, because the weakening is specific to the family's blocks: perturbed-attention
guidance to Sana's linear attention, skip-layer guidance to Wan's blocks. The weakening itself is diffusers' own
(its PAG attention processors, its layer-skip hooks), set on the model for the perturbed forward only and removed
after it, so the model is unchanged between forwards and for any other sampler.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
from diffusers.guiders.guider_utils import rescale_noise_cfg
from diffusers.hooks import HookRegistry, LayerSkipConfig
from diffusers.hooks.layer_skip import _apply_layer_skip_hook
from diffusers.models.attention_processor import (
    PAGCFGSanaLinearAttnProcessor2_0,
    PAGIdentitySanaLinearAttnProcessor2_0,
)

from .guidance import _finite
from .speed import register_blocks


def parse_layers(text: str) -> tuple[int, ...]:
    """'8, 12' -> (8, 12): the block indices a node's layers text names."""
    parts = [part.strip() for part in str(text).split(",")]
    if not all(part.isdigit() for part in parts):
        raise ValueError(f"The layers must be block indices separated by commas, such as '8' or '7, 8, 9'; got "
                         f"{text!r}.")
    return tuple(dict.fromkeys(int(part) for part in parts))


class PerturbedGuidance:
    """What both methods share: CFG with `cfg`, plus `scale` times (cond - perturbed) on the steps of a window.

    Args:
        scale: weight of the perturbation term; 0 turns it off.
        layers: indices of the blocks the perturbed forward weakens (0 is the first block).
        cfg: the classifier-free guidance scale, applied on every step.
        start, end: fractions of the run in which the perturbation term is on (see each method for how the steps
            are counted); CFG is on for the whole run.
    """

    family = ""  # the sampler family the method belongs to
    name = ""

    def __init__(self, scale: float, layers, cfg: float, start: float, end: float):
        self.scale, self.cfg = _finite("scale", scale), _finite("cfg", cfg)
        self.start, self.end = _finite("start", start), _finite("end", end)
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(f"The guidance range needs 0 <= start < end <= 1, got start {start} and end {end}.")
        layers = tuple(layers) if isinstance(layers, (tuple, list)) else (layers,)
        if not layers or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
            raise ValueError(f"The {self.name} layers must be one or more block indices >= 0, got {layers!r}.")
        self.layers = layers

    def for_run(self) -> PerturbedGuidance:
        return copy.copy(self)

    def check_model(self, family: str, depth: int) -> None:
        """Refuses a model of another family, or layers the model does not have."""
        if family != self.family:
            raise ValueError(f"{self.name} guidance is for the {self.family.capitalize()} sampler; connect it to that "
                             f"one, or use CFG, CFG-Zero* or APG with the {family.capitalize()} sampler.")
        for index in self.layers:
            if index >= depth:
                raise ValueError(f"{self.name} layer {index} is beyond this model's {depth} blocks (0 to "
                                 f"{depth - 1}).")


class PAG(PerturbedGuidance):
    """Perturbed-attention guidance (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention
    Guidance", https://arxiv.org/abs/2403.17377) for Sana, as diffusers' SanaPAGPipeline computes it.

    The perturbed forward replaces the self-attention of the chosen blocks by the identity (the attention map
    becomes the identity matrix, so each token keeps its own value projection). As in the pipeline, a step runs
    [uncond, cond, perturbed] as one batch, with diffusers' PAG processors for Sana's linear attention on the chosen
    blocks, and the velocity is uncond + cfg (cond - uncond) + scale (cond - perturbed).

    Args:
        scale: the PAG scale (the pipeline's pag_scale).
        layers: the blocks whose self-attention is perturbed. Sana's documentation uses block 8 (of 20 in the
            1600M model). An index means exactly that block (diffusers' pattern "transformer_blocks.1" also
            matches blocks 10 to 19 of a deeper model).
        cfg: the CFG scale; as in SanaPipeline only above 1 is the uncond forward run.
        adaptive_scale: the pipeline's pag_adaptive_scale: the PAG scale at timestep t (0 to 1000) is
            max(scale - adaptive_scale * (1000 - t), 0), so it fades towards the end of the run; 0 is off.
        start, end: the perturbation is on for steps int(start * total) <= step < int(end * total). The pipeline
            has no window: the defaults are its behaviour.
    """

    family, name = "sana", "PAG"

    def __init__(self, scale: float, layers: tuple[int, ...] = (8,), cfg: float = 4.5, adaptive_scale: float = 0.0,
                 start: float = 0.0, end: float = 1.0):
        super().__init__(scale, layers, cfg, start, end)
        self.adaptive_scale = _finite("adaptive_scale", adaptive_scale)

    @property
    def uses_uncond(self) -> bool:
        return self.cfg > 1.0

    def perturbs(self, step: int, total: int) -> bool:
        return self.scale > 0.0 and int(self.start * total) <= step < int(self.end * total)

    def scale_at(self, t: torch.Tensor):
        """PAGMixin._get_pag_scale: the adaptive scale is computed on the timestep tensor, as the pipeline does."""
        if self.adaptive_scale > 0.0 and self.scale > 0.0:
            signal_scale = self.scale - self.adaptive_scale * (1000 - t)
            return 0 if signal_scale < 0 else signal_scale
        return self.scale

    @contextlib.contextmanager
    def perturbed(self, transformer):
        """The PAG processors on the chosen blocks' self-attention, the originals back afterwards."""
        processor = PAGCFGSanaLinearAttnProcessor2_0() if self.uses_uncond else PAGIdentitySanaLinearAttnProcessor2_0()
        attentions = [transformer.transformer_blocks[i].attn1 for i in self.layers]
        originals = [attention.processor for attention in attentions]
        for attention in attentions:
            attention.processor = processor
        try:
            yield
        finally:
            for attention, original in zip(attentions, originals):
                attention.processor = original

    def combine(self, out: torch.Tensor, t: torch.Tensor, perturbed: bool) -> torch.Tensor:
        """The velocity from the batch [uncond, cond] (if uses_uncond) + [perturbed] (if perturbed)."""
        chunks = out.chunk(int(self.uses_uncond) + 1 + int(perturbed))
        if perturbed:
            pag_scale = self.scale_at(t)
            if self.uses_uncond:
                uncond, cond, perturb = chunks
                return uncond + self.cfg * (cond - uncond) + pag_scale * (cond - perturb)
            cond, perturb = chunks
            return cond + pag_scale * (cond - perturb)
        if self.uses_uncond:
            uncond, cond = chunks
            return uncond + self.cfg * (cond - uncond)
        return chunks[0]


class SkipLayerGuidance(PerturbedGuidance):
    """Skip-layer guidance (StabilityAI's SLG for SD3.5, https://github.com/Stability-AI/sd3.5; in the spirit of
    Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself", https://arxiv.org/abs/2406.02507)
    for Wan, as diffusers' SkipLayerGuidance guider computes it.

    The perturbed forward is the cond forward with the chosen blocks skipped entirely (diffusers' layer-skip hooks:
    a skipped block returns its input). On steps of the window the velocity is
    uncond + cfg (cond - uncond) + scale (cond - skipped); on other steps it is CFG alone.

    Args:
        scale: the guider's skip_layer_guidance_scale.
        layers: the blocks to skip (the guider's skip_layer_guidance_layers); block 9 is the Wan community's choice
            for the 1.3B model.
        cfg: the CFG scale (the guider's guidance_scale); 1.0 runs no uncond forward.
        start, end: the guider's skip_layer_guidance_start / stop and its count: the skip forward runs on steps
            int(start * total) < step < int(end * total) (the first bound is strict, as diffusers has it). The
            defaults are diffusers' (StabilityAI's for SD3.5 Medium).
        rescale: the guider's guidance_rescale (Lin et al. 2023), applied to every step's velocity; 0 is off.
    """

    family, name = "wan", "Skip-layer"

    def __init__(self, scale: float, layers: tuple[int, ...] = (9,), cfg: float = 5.0, start: float = 0.01,
                 end: float = 0.2, rescale: float = 0.0):
        super().__init__(scale, layers, cfg, start, end)
        self.rescale = _finite("rescale", rescale)

    @property
    def uses_uncond(self) -> bool:
        return not math.isclose(self.cfg, 1.0)

    def perturbs(self, step: int, total: int) -> bool:
        return not math.isclose(self.scale, 0.0) and int(self.start * total) < step < int(self.end * total)

    @contextlib.contextmanager
    def perturbed(self, transformer):
        """diffusers' layer-skip hooks on the chosen blocks, removed afterwards."""
        name = "sana_wan_skip_layer_guidance"
        register_blocks(transformer)  # the blocks of a LoRA'd or partly loaded model are cast-on-call subclasses
        _apply_layer_skip_hook(transformer, LayerSkipConfig(list(self.layers), fqn="blocks"), name=name)
        try:
            yield
        finally:
            HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(name, recurse=True)

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor | None, skipped: torch.Tensor | None) -> torch.Tensor:
        """SkipLayerGuidance.forward (its default, not the original, formulation)."""
        velocity = cond
        if uncond is not None and skipped is not None:
            velocity = uncond + self.cfg * (cond - uncond) + self.scale * (cond - skipped)
        elif uncond is not None:
            velocity = uncond + self.cfg * (cond - uncond)
        elif skipped is not None:
            velocity = skipped + self.scale * (cond - skipped)
        return rescale_noise_cfg(velocity, cond, self.rescale) if self.rescale > 0.0 else velocity


def check_family(guidance, family: str, depth: int) -> None:
    """A sampler's check of its guidance input: perturbation methods are for one family each."""
    if isinstance(guidance, PerturbedGuidance):
        guidance.check_model(family, depth)
