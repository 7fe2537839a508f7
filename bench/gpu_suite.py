"""The pack against its references on one GPU, in one command: wall time and peak VRAM of each path, written as JSON
and a Markdown table (issue 19). No network: every model is built from the released configs with seeded random
weights, at the real sizes (tiny sizes with --smoke).

Cases (each path and its references measured in the same run, interleaved: every repetition runs every path once,
in an order rotated by one each time; one warm-up run of each first, then --reps timed runs, medians reported):
- wan_t2v: Wan2.1 T2V 1.3B (real config), 832x480, 81 frames, flow_unipc (UniPC bh2) at shift 8, CFG 6, bf16, --steps
  steps: the pack's Wan Sampler node vs diffusers' WanPipeline on the same weights (latents in, prompt embeddings
  given, output_type="latent": no text encoder, no VAE) vs ComfyUI's native UNETLoader + KSampler(uni_pc_bh2, simple)
  on the same file, and the pack's node inside that ComfyUI (its model management), when --comfyui names a ComfyUI
  source tree (a separate Python process: the pack in this one runs standalone);
- wan_low_vram: the pack with fp8_e4m3fn weight storage, a --budget-gb weight budget (Model Memory Options), both;
- wan_step_cache: MagCache (0.12) and First Block Cache (0.1), with the forwards whose blocks were skipped;
- wan_attention: every attention backend that runs on the device (SDPA flash / cuDNN / efficient pinned through
  torch.nn.attention.sdpa_kernel; flash-attn, sage-attention, xformers only where importable);
  the Wan cases are one interleaved measurement: the pack's plain run is the same row in each;
- sana: Sana 1.6B 1024x1024, 20 steps flow_dpmpp_2m, CFG 4.5, bf16: Sana Sampler node vs SanaPipeline;
- sana_sprint: Sana-Sprint 1.6B, 1 and 2 steps: Sana-Sprint Sampler node vs SanaSprintPipeline;
- dcae_decode: DC-AE (f32c32) decode of a 4096x4096 image in 1024 px tiles overlapping by 128: the DC-AE Decode node
  vs diffusers' own tiled decode;
- wan_text_encoder: UMT5-XXL (Wan's text encoder) encoding a prompt and the negative prompt with the Wan Text Encode
  node, on the GPU and on the CPU (Wan Text Encoder Memory Options device=cpu, the low-VRAM mode that keeps it off the
  GPU; the Wan cases above sample from given embeddings, so no text encoder is on the GPU there either).

Per run: wall time (CUDA synchronised), seconds per step from the step callbacks (the first step's end to the last
step's end: per-run overheads left out) and, for Wan, an estimate of 50 steps (the run + the steps not run at that
per-step time); peak VRAM = torch.cuda.max_memory_allocated (reset before each run) minus what was allocated before
the run, plus the bytes of that path's own weights on the GPU: the peak the path would show with only its own model
on the GPU (the paths of a case share one process). max|d| is the largest difference from the case's comparison
output, relative to its largest value (the native KSampler uses ComfyUI's schedule: not compared).

Time: 50 steps of each Wan path do not fit 8 minutes, so the Wan paths run --steps steps (default 3, warm-up 2) and
report seconds per step. The default is sized from published figures: Wan2.1 1.3B 480p 81 frames, 50 steps of CFG,
takes ~189 s on an A800 (MagCache's README; 3.8 s a step), and an H100 computes such a step (~5.8e14 FLOPs, two
forwards of 32,760 tokens) about twice as fast: ~1.9 s a step, 2.5 s assumed as a pessimistic bound. Then the 12 Wan
paths x (2 + 3 x 3) steps take ~250 s (~330 s), Sana / Sprint ~15 s, the 4K decodes ~30 s, the text encoder ~40 s
(mostly its CPU runs) and building the models and the file ~40 s: ~6.3 minutes (~7.6 at 2.5 s a step). --time-limit
(default 450 s from the start) stops a case between repetitions when the next one would end past it, skips the cases
not begun by then, and says so in the output: the run ends within 8 minutes either way.

    python bench/gpu_suite.py --out bench/results                                   # needs a CUDA device
    python bench/gpu_suite.py --out bench/results --comfyui ../ComfyUI              # with native ComfyUI columns
    python bench/gpu_suite.py --smoke --out /tmp/gpu_suite                          # tiny sizes, CPU, < 1 minute
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import sampler_vs_pipeline as base  # bench/ is the script's folder, first on sys.path; it imports the pack
import torch
from diffusers import (AutoencoderDC, SanaPipeline, SanaSprintPipeline, SanaTransformer2DModel, SCMScheduler,
                       WanPipeline, WanTransformer3DModel)
from safetensors.torch import save_file
from speed_features import CACHES, Calls
from transformers import UMT5Config, UMT5EncoderModel

from sana_wan import comfy_bridge as bridge
from sana_wan.loaders.sana_transformer import sana_variant
from sana_wan.loaders.wan_transformer import load_wan_transformer
from sana_wan.nodes.decode import DCAEDecode
from sana_wan.nodes.memory import WanModelMemoryOptions, WanTextEncoderMemoryOptions
from sana_wan.nodes.sana import SanaSampler
from sana_wan.nodes.speed import WanSpeedOptions
from sana_wan.nodes.sprint import SanaSprintSampler
from sana_wan.nodes.text import WanTextEncode
from sana_wan.nodes.wan import WanSampler
from sana_wan.samplers.conditioning import make_conditioning
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.sana import SANA_LATENT_SCALE
from sana_wan.samplers.schedulers import make_scheduler
from sana_wan.samplers.scm import MAX_TRIGFLOW_TIME, step_noise_generator
from sana_wan.samplers.wan import batch_cond_uncond, wan_memory_estimate
from sana_wan.text.wan_prompt import WAN_DEFAULT_NEGATIVE
from sana_wan.vae.wan import to_raw

sys.path.insert(0, os.path.join(base.ROOT, "tests"))
import tiny_dcae  # noqa: E402  (the real DC-AE config and the tiny one)
import tiny_sana  # noqa: E402
import tiny_umt5  # noqa: E402  (a sentencepiece tokenizer trained on the fly)
import tiny_wan  # noqa: E402  (diffusers -> original Wan keys, ComfyUI's layout)

SEED = base.SEED
REPLY = "@gpu_suite@ "  # the worker's reply lines start with this
WAN_FILE = "wan2.1_t2v_1.3B_bf16_random.safetensors"
SPRINT_STEPS = (1, 2)
# google/umt5-xxl config.json (as scripts/write_manifests.py)
UMT5_XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
            "relative_attention_num_buckets": 32}
# Backends timed beside the default (SDPA's own pick); the rest of diffusers' list are variants of these. The math
# kernel is left out: at 480p / 81 frames it materialises 12 x 32,760^2 attention scores, the slow reference.
ATTENTION = ("_native_flash", "_native_cudnn", "_native_efficient", "flash", "_flash_3", "sage", "xformers")
PROMPT = "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage"
CPU_NO_VRAM = "CPU run: no CUDA memory to measure"


@dataclass(frozen=True)
class Sizes:
    """What a run builds: the real models (GPU) or the tests' tiny ones (--smoke)."""

    wan: dict
    frames: int
    height: int
    width: int
    sana: dict
    sprint: dict
    sana_px: int
    dcae: dict
    decode_px: int
    tile: int
    overlap: int
    umt5: dict
    caption_width: int
    smoke: bool


def sizes_for(smoke: bool) -> Sizes:
    if smoke:
        sana = tiny_sana.TINY_CONFIG
        return Sizes(tiny_wan.TINY_CONFIG, 5, 32, 32, sana, {**sana, **tiny_sana.VARIANTS["sprint"]}, 64,
                     tiny_dcae.TINY_DCAE_CONFIG, 128, 96, 32, tiny_umt5.TINY_SIZES, sana["caption_channels"], True)
    sprint = {**base.SANA_1600M, "qk_norm": "rms_norm_across_heads", "guidance_embeds": True,
              "guidance_embeds_scale": 0.1}  # Sana_Sprint_1.6B_1024px_diffusers transformer/config.json
    return Sizes(base.WAN_T2V_1_3B, 81, 480, 832, base.SANA_1600M, sprint, 1024, tiny_dcae.SANA_DCAE_CONFIG, 4096,
                 1024, 128, UMT5_XXL, base.SANA_1600M["caption_channels"], False)


# ---------------------------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """When each sampling step ended (device synchronised), fed by the samplers' step callbacks."""

    def __init__(self):
        self.device = torch.device("cpu")
        self.marks: list[tuple[int, float]] = []

    def reset(self, device: torch.device) -> None:
        self.device, self.marks = device, []

    def tick(self, step: int) -> None:
        synchronize(self.device)
        self.marks.append((int(step), time.perf_counter()))

    def seconds_per_step(self) -> float | None:
        """From the first step's end to the last one's: per-run overheads (setup, first-step launch) left out."""
        if len(self.marks) < 2 or self.marks[-1][0] <= self.marks[0][0]:
            return None
        (first, start), (last, end) = self.marks[0], self.marks[-1]
        return (end - start) / (last - first)


CLOCK = StepClock()


def _timed_step_callback(make):
    """bridge.step_callback with a clock tick after each step (the pack's nodes build their callback with it)."""

    def step_callback(total, preview=None):
        inner = make(total, preview)

        def callback(step, run_total, x0):
            inner(step, run_total, x0)
            CLOCK.tick(step)

        return callback

    return step_callback


def pipeline_tick(pipe, index, timestep, tensors):
    """callback_on_step_end for the diffusers pipelines."""
    CLOCK.tick(index + 1)
    return tensors


def resident_bytes(module: torch.nn.Module, device: torch.device) -> int:
    """Bytes of the module's tensors stored on `device` (each storage counted once)."""
    storages = {}
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.device.type == device.type:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


@dataclass
class Column:
    """One path of a measurement group. `run(warm_up)` does one run and returns its output (a tensor) or None;
    `prepare()` puts the path's weights where it runs them (not timed); `remote(warm_up)` measures in the worker."""

    key: str
    label: str
    cases: tuple[str, ...]
    run: Callable[[bool], object] | None = None
    prepare: Callable[[], None] | None = None
    module: Callable[[], torch.nn.Module] | None = None  # whose weights on the device count towards its peak
    remote: Callable[[bool], dict] | None = None
    baseline: str | None = None  # the row its time is divided by
    compare: str | None = None  # the row whose output it is compared with
    steps: int | None = None  # sampling steps of a timed run (None: no per-step figure)
    estimate: bool = False  # whether to estimate 50 steps from the per-step figure
    skip: str | None = None
    note: str = ""
    counter: tuple | None = None  # (forward Calls, last-block Calls): forwards whose blocks ran
    results: dict = field(default_factory=lambda: {"seconds": [], "step_s": [], "peak": [], "extra": {}})
    output: object = None


def measure(column: Column, device: torch.device, warm_up: bool) -> dict:
    """One run of a local column: wall seconds, seconds per step, peak VRAM (None on the CPU), its output."""
    if column.prepare is not None:
        column.prepare()
    synchronize(device)
    cuda = device.type == "cuda"
    before = torch.cuda.memory_allocated(device) if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    own = resident_bytes(column.module(), device) if cuda and column.module is not None else 0
    if column.counter is not None:
        for calls in column.counter:
            calls.count = 0
    CLOCK.reset(device)
    start = time.perf_counter()
    output = column.run(warm_up)
    synchronize(device)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "step_s": CLOCK.seconds_per_step(),
              "peak": own + torch.cuda.max_memory_allocated(device) - before if cuda else None}
    if column.counter is not None:
        forwards, ran = column.counter
        result["extra"] = {"forwards": forwards.count, "blocks_ran": ran.count}
    if isinstance(output, torch.Tensor):
        result["output"] = output.detach().float().cpu()
    return result


def run_group(columns: list[Column], reps: int, device: torch.device, deadline: float) -> str | None:
    """Warm-up then `reps` interleaved repetitions (order rotated each time); a path that fails is skipped with the
    error. Returns a note when the time limit cut the repetitions short."""
    last_rep = 0.0
    for rep in range(reps + 1):
        active = [c for c in columns if c.skip is None]
        if not active:
            return None
        if rep > 1 and time.perf_counter() + last_rep > deadline:
            return f"stopped after {rep - 1} of {reps} timed repetitions: --time-limit reached"
        rep_start = time.perf_counter()
        shift = rep % len(active)
        for column in active[shift:] + active[:shift]:
            try:
                result = column.remote(rep == 0) if column.remote is not None else measure(column, device, rep == 0)
            except Exception as error:  # one path failing must not cost the others' figures
                column.skip = f"failed: {_first_line(error)}"
                print(f"  {column.key}: {column.skip}\n{traceback.format_exc()}", file=sys.stderr, flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            tag = "warm-up" if rep == 0 else f"rep {rep}"
            peak = "" if result["peak"] is None else f", peak {result['peak'] / 2**30:.2f} GiB"
            print(f"  {column.key:22s} {tag:8s} {result['seconds']:8.3f} s{peak}", flush=True)
            if "output" in result:
                column.output = result["output"]
            if rep == 0:
                continue
            for name in ("seconds", "step_s", "peak"):
                column.results[name].append(result[name])
            column.results["extra"] = result.get("extra", {})
        last_rep = time.perf_counter() - rep_start
    return None


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(column: Column, columns: dict[str, Column], device: torch.device, baseline: str | None) -> dict:
    """The row of one path: medians, peak (the largest of its runs), the ratio of its median wall time to the
    baseline's (`baseline`, else the column's own), the 50-step estimate where no step was skipped."""
    baseline = baseline or column.baseline
    r = column.results
    wall = _median(r["seconds"])
    row = {"key": column.key, "label": column.label, "runs": len(r["seconds"]), "wall_s": wall,
           "wall_s_runs": [round(s, 4) for s in r["seconds"]],
           "step_s": _median(r["step_s"]) if column.steps else None,
           "steps": column.steps, "est_50_steps_s": None, "peak_vram_bytes": None, "peak_vram_gib": None,
           "peak_vram_note": None, "ratio": None, "baseline": baseline, "max_rel_diff": None,
           "compared_with": column.compare, "skipped": column.skip, "note": column.note, **r["extra"]}
    if column.skip is not None and not r["seconds"]:
        return row
    peaks = [p for p in r["peak"] if p is not None]
    if peaks:
        row["peak_vram_bytes"] = max(peaks)
        row["peak_vram_gib"] = round(max(peaks) / 2**30, 3)
    else:
        row["peak_vram_note"] = CPU_NO_VRAM if device.type != "cuda" else "not measured"
    skipped_blocks = r["extra"].get("blocks_ran", 0) < r["extra"].get("forwards", 0)
    if column.estimate and row["step_s"] is not None and wall is not None and not skipped_blocks:
        row["est_50_steps_s"] = wall + (50 - column.steps) * row["step_s"]
    reference = columns.get(baseline)
    if reference is not None and wall is not None and reference.results["seconds"]:
        row["ratio"] = wall / _median(reference.results["seconds"])
    other = columns.get(column.compare)
    if other is not None and column.output is not None and other.output is not None:
        a, b = column.output, other.output
        row["max_rel_diff"] = float((a - b).abs().max() / b.abs().max()) if a.shape == b.shape else None
    return row


# ---------------------------------------------------------------------------------------------- models


def meta_build(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.device("meta"):
        return build()


def twin(model: torch.nn.Module, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """A second module over the same tensors: the reference pipelines get a plain diffusers model while the pack's
    handle turns its own into cast-on-call layers (no weights are copied)."""
    other = meta_build(build)
    other.load_state_dict(model.state_dict(), assign=True)
    return other.eval()


def embeddings(length: int, width: int, valid: int, seed: int, zero_padded: bool):
    return base.embeddings(length, width, valid, seed, zero_padded)


def wan_inputs(sizes: Sizes):
    shape = (1, 16, (sizes.frames - 1) // 4 + 1, sizes.height // 8, sizes.width // 8)
    (pos, pos_mask), (neg, neg_mask) = embeddings(512, 4096, 60, 3, True), embeddings(512, 4096, 25, 4, True)
    return shape, make_conditioning(pos, pos_mask), make_conditioning(neg, neg_mask), pos, neg


def write_wan_file(sizes: Sizes, folder: str, device: torch.device, dtype: torch.dtype) -> str:
    """The Wan transformer as ComfyUI's repackaged single file (original keys under model.diffusion_model.), which
    both the pack's loader and ComfyUI's UNETLoader read; weights drawn on the device."""
    model = base.random_model(WanTransformer3DModel, sizes.wan, SEED, device, dtype)
    state = {k: v.to("cpu").contiguous() for k, v in model.state_dict().items()}
    del model
    path = os.path.join(folder, WAN_FILE)
    save_file({"model.diffusion_model." + k: v for k, v in tiny_wan.diffusers_to_original(state).items()}, path)
    return path


def wan_handle(path: str, dtype: torch.dtype, storage: torch.dtype | None = None):
    """What Load Wan2.1 Transformer returns for the file (without ComfyUI's model folders)."""
    model, variant = load_wan_transformer(path, dtype, storage)
    return bridge.ModelHandle(model, "diffusion", family="wan", variant=variant)


def pack_wan_run(handle, sizes: Sizes, steps: int, warm_steps: int):
    shape, positive, negative, _, _ = wan_inputs(sizes)

    def run(warm_up: bool):
        latent = {"samples": torch.zeros(shape)}
        return WanSampler().sample(handle, positive, negative, latent, SEED, warm_steps if warm_up else steps, 6.0,
                                   0.0, "flow_unipc", "default", 1.0)[0]["samples"]

    return run


# ---------------------------------------------------------------------------------------------- Wan


def wan_columns(args, sizes: Sizes, device: torch.device, dtype: torch.dtype, folder: str):
    path = write_wan_file(sizes, folder, device, dtype)
    worker = ComfyWorker.start(args, sizes, device, dtype, folder) if args.comfyui else None
    try:
        return _wan_columns(args, sizes, device, dtype, path, worker)
    except BaseException:
        if worker is not None:
            worker.close()
        raise


def _wan_columns(args, sizes: Sizes, device: torch.device, dtype: torch.dtype, path: str, worker):
    steps, warm = args.steps, min(2, args.steps)
    shape, _, _, pos, neg = wan_inputs(sizes)
    plain = wan_handle(path, dtype)
    fp8 = wan_handle(path, dtype, torch.float8_e4m3fn)
    pipe_model = load_wan_transformer(path, dtype)[0].to(device)
    shift = plain.info["variant"].default_shift
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=pipe_model, vae=None, scheduler=None)
    pipe.set_progress_bar_config(disable=True)
    budget_gb = args.budget_gb if not sizes.smoke else plain.patcher.model_size() / 2 / 2**30
    counters = {id(h): (Calls(h.module), Calls(h.module.blocks[-1])) for h in (plain, fp8)}
    pos_d, neg_d = pos.to(device), neg.to(device)
    one_pass = wan_memory_estimate(plain.module, shape)
    batched = batch_cond_uncond(device, plain.patcher.model_size(), one_pass, bridge.total_memory(device))
    batching = "cond and uncond in one batch (the node's choice here)" if batched else "cond and uncond as two forwards"

    def pipeline(warm_up: bool):
        pipe.scheduler = make_scheduler("flow_unipc", shift)
        latents = pipe(prompt_embeds=pos_d, negative_prompt_embeds=neg_d, latents=comfy_noise(shape, SEED),
                       height=sizes.height, width=sizes.width, num_frames=sizes.frames,
                       num_inference_steps=warm if warm_up else steps, guidance_scale=6.0, output_type="latent",
                       callback_on_step_end=pipeline_tick).frames
        return to_raw(latents.float())

    def pack_column(key, label, cases, handle, counted=None, **kw):
        return Column(key, label, cases, run=pack_wan_run(handle, sizes, steps, warm), prepare=handle.load,
                      module=lambda: handle.module, steps=steps, estimate=True, counter=counted, **kw)

    t2v, low, cache, attention = "wan_t2v", "wan_low_vram", "wan_step_cache", "wan_attention"
    columns = [
        pack_column("pack", f"pack: Wan Sampler node ({_name(dtype)}, loaded whole)", (t2v, low, cache, attention),
                    plain, baseline="pipeline", compare="pipeline", note=batching),
        Column("pipeline", "diffusers WanPipeline (same weights, two forwards a step)", (t2v,), run=pipeline,
               module=lambda: pipe_model, baseline="pipeline", steps=steps, estimate=True),
    ]
    columns += worker.columns(steps) if worker else [
        Column(key, label, (t2v,), skip="no --comfyui given: ComfyUI not importable in this run", steps=steps)
        for key, label in ComfyWorker.LABELS.items()]
    budget = WanModelMemoryOptions().apply(plain, budget_gb)[0]
    both = WanModelMemoryOptions().apply(fp8, budget_gb)[0]

    def fits(handle) -> str:
        size = handle.patcher.model_size()
        fit = size <= budget_gb * 2**30
        return f"all {size / 2**30:.2f} GiB of weights fit the budget: loaded whole" if fit else ""

    columns += [
        pack_column("fp8", "pack: weight storage fp8_e4m3fn", (low,), fp8, baseline="pack", compare="pack"),
        pack_column("budget", f"pack: weight budget {budget_gb:.3g} GB (Model Memory Options)", (low,), budget,
                    baseline="pack", compare="pack", note=fits(plain)),
        pack_column("fp8_budget", f"pack: fp8 storage + weight budget {budget_gb:.3g} GB", (low,), both,
                    baseline="pack", compare="pack", note=fits(fp8)),
    ]
    for cache_name, label in (("mag", "MagCache"), ("first_block", "First Block Cache")):
        threshold = CACHES["wan"][cache_name]
        try:
            handle = WanSpeedOptions().apply(plain, "default", cache_name, threshold, False)[0]
        except ValueError as error:  # MagCache has calibrated ratios for the released sizes only
            columns.append(Column(cache_name, f"pack: {label} {threshold}", (cache,), skip=f"not available: {error}"))
            continue
        columns.append(pack_column(cache_name, f"pack: {label} {threshold}", (cache,), handle,
                                   counters[id(plain)], baseline="pack", compare="pack"))
    for backend in ATTENTION:
        try:
            handle = WanSpeedOptions().apply(plain, backend, "none", 0.1, False)[0]
        except ValueError as error:
            columns.append(Column(f"attn{backend}", f"attention {backend}", (attention,), steps=steps,
                                  skip=f"not available here: {str(error).split('. Choose one of')[0]}"))
            continue
        columns.append(pack_column(f"attn{backend}", f"pack: attention {backend}", (attention,), handle,
                                   baseline="pack", compare="pack"))
    columns.append(Column("attn_native_math", "attention _native_math", (attention,), steps=steps,
                          skip="not timed: the reference kernel materialises every attention score"))
    for column in columns:
        if column.counter is None and column.run is not None and column.key != "pipeline":
            column.counter = counters[id(fp8)] if column.key.startswith("fp8") else counters[id(plain)]
    setting = (f"{sizes.width}x{sizes.height}, {sizes.frames} frames, {steps} steps flow_unipc (warm-up {warm}), "
               f"CFG 6, shift {shift:g}, {_name(dtype)}")
    model = "Wan2.1 T2V (tiny)" if sizes.smoke else "Wan2.1 T2V 1.3B"
    cases = {
        t2v: {"title": f"{model}: pack vs WanPipeline vs native ComfyUI", "setting": setting,
              "baseline": "pipeline"},
        low: {"title": f"{model}: low-VRAM modes", "baseline": "pack", "setting": setting + (
            "; no text encoder on the GPU (embeddings given: see wan_text_encoder for the encoder on the CPU)")},
        cache: {"title": f"{model}: step caches", "baseline": "pack", "setting": setting + (
            "; random weights: First Block Cache's skips are not representative, MagCache's follow its calibrated "
            "curve, and grow with the step count")},
        attention: {"title": f"{model}: attention backends", "baseline": "pack", "setting": setting},
    }
    return columns, cases, (worker.close if worker else None)


class ComfyWorker:
    """ComfyUI's native Wan path, and the pack inside that ComfyUI, in a second Python process (the pack in this
    process stays standalone). Requests and replies are JSON lines; its log goes to OUT/comfyui_worker.log."""

    LABELS = {"native": "native ComfyUI: UNETLoader + KSampler (uni_pc_bh2, simple)",
              "pack_comfyui": "pack inside ComfyUI (its model management)"}

    def __init__(self, proc, log_path):
        self.proc, self.log_path, self.setup = proc, log_path, None

    @classmethod
    def start(cls, args, sizes: Sizes, device, dtype, folder):
        log_path = os.path.join(args.out, "comfyui_worker.log")
        spec = {"comfyui": os.path.abspath(args.comfyui), "folder": folder, "smoke": sizes.smoke,
                "device": str(device), "dtype": _name(dtype), "steps": args.steps}
        log = open(log_path, "w")
        proc = subprocess.Popen([args.comfyui_python, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        return cls(proc, log_path)

    def _reply(self, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                raise TimeoutError(f"no answer from the ComfyUI worker in {timeout:.0f} s")
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the ComfyUI worker exited: {self._log_tail()}")
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])

    def _log_tail(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-3:])[-600:]

    def columns(self, steps: int) -> list[Column]:
        try:
            self.setup = self._reply(300)
        except Exception as error:
            self.setup = {"ok": False, "error": str(error)}
        reason = None if self.setup.get("ok") else f"ComfyUI not usable: {self.setup.get('error')}"
        out = []
        for key, label in self.LABELS.items():
            why = reason or self.setup.get("skip", {}).get(key)
            out.append(Column(key, label, ("wan_t2v",), remote=self._remote(key), skip=why, steps=steps,
                              estimate=True, baseline="pipeline", compare="pack" if key == "pack_comfyui" else None,
                              note=self.setup.get("notes", {}).get(key, "")))
        return out

    def _remote(self, key: str):
        def remote(warm_up: bool) -> dict:
            self.proc.stdin.write(json.dumps({"op": "run", "key": key, "warm_up": warm_up}) + "\n")
            self.proc.stdin.flush()
            reply = self._reply(600)
            if "error" in reply:
                raise RuntimeError(reply["error"])
            if reply.pop("output_file", None):
                reply["output"] = torch.load(os.path.join(self.setup["folder"], f"{key}.pt"))
            return reply

        return remote

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def worker_main(spec: dict) -> None:
    """The ComfyUI side: set ComfyUI up as its main.py would (--cpu for a CPU run; no previews), load the file with
    UNETLoader and with the pack, then answer run requests."""
    reply_file = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything ComfyUI prints goes to the log, not into the replies

    def reply(message: dict) -> None:
        reply_file.write(REPLY + json.dumps(message) + "\n")

    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    try:
        sys.path.insert(0, spec["comfyui"])
        sys.argv = [sys.argv[0]] + (["--cpu"] if device.type == "cpu" else [])
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args

        comfy.cli_args.args.preview_method = comfy.cli_args.LatentPreviewMethod.NoPreviews
        import comfy.utils
        import folder_paths
        import nodes

        comfy.utils.set_progress_bar_enabled(False)
        comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: CLOCK.tick(value))
        folder_paths.add_model_folder_path("diffusion_models", spec["folder"])
        try:
            from comfyui_version import __version__ as version
        except ImportError:
            version = "unknown"
    except Exception as error:
        reply({"ok": False, "error": f"{type(error).__name__}: {error}"})
        return
    sizes = sizes_for(spec["smoke"])
    shape, positive, negative, pos, neg = wan_inputs(sizes)
    steps, warm = spec["steps"], min(2, spec["steps"])
    columns, skip, notes = {}, {}, {}
    try:
        native = nodes.UNETLoader().load_unet(WAN_FILE, "default")[0]
        native_positive, native_negative = [[pos, {}]], [[neg, {}]]

        def native_run(warm_up: bool):
            latent = {"samples": torch.zeros(shape)}
            return nodes.KSampler().sample(native, SEED, warm if warm_up else steps, 6.0, "uni_pc_bh2", "simple",
                                           native_positive, native_negative, latent, 1.0)[0]["samples"]

        columns["native"] = Column("native", "", (), run=native_run, module=lambda: native.model)
        notes["native"] = (f"ComfyUI {version}, weights {_name(native.model.get_dtype())}, "
                           "ComfyUI's own schedule (output not compared); imported as a library: main.py's "
                           "cudaMallocAsync and dynamic VRAM off")
    except Exception as error:
        skip["native"] = f"failed: {type(error).__name__}: {error}"
    try:
        handle = wan_handle(os.path.join(spec["folder"], WAN_FILE), dtype)
        columns["pack_comfyui"] = Column("pack_comfyui", "", (), run=pack_wan_run(handle, sizes, steps, warm),
                                         module=lambda: handle.module)
        notes["pack_comfyui"] = f"ComfyUI {version}"
    except Exception as error:
        skip["pack_comfyui"] = f"failed: {type(error).__name__}: {error}"
    reply({"ok": True, "version": version, "skip": skip, "notes": notes, "folder": spec["folder"]})
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] != "run":
            break
        try:
            result = measure(columns[request["key"]], device, request["warm_up"])
        except Exception as error:
            reply({"error": _first_line(error)})
            traceback.print_exc()
            continue
        output = result.pop("output", None)
        if output is not None and request["key"] == "pack_comfyui":
            torch.save(output, os.path.join(spec["folder"], f"{request['key']}.pt"))
            result["output_file"] = True
        reply(result)


# ---------------------------------------------------------------------------------------------- Sana, Sprint, DC-AE


def sana_columns(args, sizes: Sizes, device, dtype, folder):
    model = base.random_model(SanaTransformer2DModel, sizes.sana, SEED, device, dtype)
    pipe_model = twin(model, lambda: SanaTransformer2DModel.from_config(sizes.sana))
    variant = sana_variant(dict(model.config))
    handle = bridge.ModelHandle(model, "diffusion", family="sana", variant=variant)
    side = sizes.sana_px // 32
    shape, steps = (1, sizes.sana["in_channels"], side, side), args.sana_steps
    pos, pos_mask = embeddings(300, sizes.caption_width, 120, 1, False)
    neg, neg_mask = embeddings(300, sizes.caption_width, 20, 2, False)
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=pipe_model, scheduler=None)
    pipe.set_progress_bar_config(disable=True)
    inputs = [t.to(device) for t in (pos, pos_mask, neg, neg_mask)]

    def pack(warm_up: bool):
        return SanaSampler().sample(handle, make_conditioning(pos, pos_mask), make_conditioning(neg, neg_mask),
                                    {"samples": torch.zeros(shape)}, SEED, steps, 4.5, 0.0, "flow_dpmpp_2m",
                                    1.0)[0]["samples"]

    def pipeline(warm_up: bool):
        pipe.scheduler = make_scheduler("flow_dpmpp_2m", variant.default_shift)
        p, pm, n, nm = inputs
        out = pipe(prompt_embeds=p, prompt_attention_mask=pm, negative_prompt=None, negative_prompt_embeds=n,
                   negative_prompt_attention_mask=nm, latents=comfy_noise(shape, SEED), height=sizes.sana_px,
                   width=sizes.sana_px, num_inference_steps=steps, guidance_scale=4.5, use_resolution_binning=False,
                   output_type="latent", callback_on_step_end=pipeline_tick).images
        return out.float() / SANA_LATENT_SCALE

    columns = [
        Column("pack", "pack: Sana Sampler node", ("sana",), run=pack, prepare=handle.load,
               module=lambda: handle.module, baseline="pipeline", compare="pipeline", steps=steps),
        Column("pipeline", "diffusers SanaPipeline (same weights)", ("sana",), run=pipeline,
               module=lambda: pipe_model, baseline="pipeline", steps=steps),
    ]
    setting = (f"{sizes.sana_px}x{sizes.sana_px}, {steps} steps flow_dpmpp_2m, CFG 4.5 (cond and uncond in one "
               f"batch on both), shift {variant.default_shift:g}, {_name(dtype)}")
    title = f"Sana {'(tiny)' if sizes.smoke else '1.6B'}: pack vs SanaPipeline"
    return columns, {"sana": {"title": title, "setting": setting}}, None


def sprint_columns(args, sizes: Sizes, device, dtype, folder):
    model = base.random_model(SanaTransformer2DModel, sizes.sprint, SEED, device, dtype)
    pipe_model = twin(model, lambda: SanaTransformer2DModel.from_config(sizes.sprint))
    handle = bridge.ModelHandle(model, "diffusion", family="sana", variant=sana_variant(dict(model.config)))
    side = sizes.sana_px // 32
    shape = (1, sizes.sprint["in_channels"], side, side)
    pos, mask = embeddings(300, sizes.caption_width, 120, 1, False)
    pipe = SanaSprintPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=pipe_model,
                              scheduler=SCMScheduler())
    pipe.set_progress_bar_config(disable=True)
    pos_d, mask_d = pos.to(device), mask.to(device)
    columns = []
    for steps in SPRINT_STEPS:
        def pack(warm_up: bool, steps=steps):
            return SanaSprintSampler().sample(handle, make_conditioning(pos, mask), {"samples": torch.zeros(shape)},
                                              SEED, steps, 4.5, 1.3, MAX_TRIGFLOW_TIME)[0]["samples"]

        def pipeline(warm_up: bool, steps=steps):
            pipe.scheduler = SCMScheduler()
            out = pipe(prompt_embeds=pos_d, prompt_attention_mask=mask_d, num_inference_steps=steps,
                       guidance_scale=4.5, intermediate_timesteps=1.3 if steps == 2 else None,
                       latents=comfy_noise(shape, SEED), generator=step_noise_generator(SEED, shape),
                       height=sizes.sana_px, width=sizes.sana_px, use_resolution_binning=False, output_type="latent",
                       callback_on_step_end=pipeline_tick).images
            return out.float() / SANA_LATENT_SCALE

        columns += [
            Column(f"pack_{steps}", f"pack: Sana-Sprint Sampler node, {steps} step(s)", ("sana_sprint",), run=pack,
                   prepare=handle.load, module=lambda: handle.module, baseline=f"pipeline_{steps}",
                   compare=f"pipeline_{steps}", steps=steps),
            Column(f"pipeline_{steps}", f"diffusers SanaSprintPipeline, {steps} step(s)", ("sana_sprint",),
                   run=pipeline, module=lambda: pipe_model, baseline=f"pipeline_{steps}", steps=steps),
        ]
    setting = f"{sizes.sana_px}x{sizes.sana_px}, sCM, guidance embedding 4.5, {_name(dtype)}"
    title = f"Sana-Sprint {'(tiny)' if sizes.smoke else '1.6B'}: 1 and 2 steps"
    return columns, {"sana_sprint": {"title": title, "setting": setting}}, None


def dcae_columns(args, sizes: Sizes, device, dtype, folder):
    vae = base.random_model(AutoencoderDC, sizes.dcae, SEED, device, dtype)
    reference = twin(vae, lambda: AutoencoderDC.from_config(sizes.dcae))
    handle = bridge.ModelHandle(vae, "vae", family="sana")
    side = sizes.decode_px // 32
    latent = torch.randn(1, sizes.dcae["latent_channels"], side, side, generator=torch.Generator().manual_seed(SEED))
    stride = sizes.tile - sizes.overlap
    reference.enable_tiling(sizes.tile, sizes.tile, stride, stride)
    latent_d = latent.to(device, dtype)

    def pack(warm_up: bool):
        return DCAEDecode().decode(handle, {"samples": latent}, "on", sizes.tile, sizes.overlap)[0]

    def diffusers_tiled(warm_up: bool):
        with torch.no_grad():
            sample = reference.decode(latent_d).sample
        return (sample.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()

    columns = [
        Column("pack", "pack: DC-AE Decode node, tiling on", ("dcae_decode",), run=pack, prepare=handle.load,
               module=lambda: handle.module, baseline="diffusers", compare="diffusers"),
        Column("diffusers", "diffusers AutoencoderDC tiled decode (same weights)", ("dcae_decode",),
               run=diffusers_tiled, module=lambda: reference, baseline="diffusers"),
    ]
    setting = (f"{sizes.decode_px}x{sizes.decode_px} image (latent {side}x{side}), tiles {sizes.tile} px overlapping "
               f"by {sizes.overlap}, {_name(dtype)}, output IMAGE float32 on the CPU")
    title = f"DC-AE {'(tiny)' if sizes.smoke else 'f32c32'} decode, tiled"
    return columns, {"dcae_decode": {"title": title, "setting": setting}}, None


def text_encoder_columns(args, sizes: Sizes, device, dtype, folder):
    tokenizer = tiny_umt5.tokenizer_from_spm(tiny_umt5.train_spm_bytes())
    vocab = sizes.umt5.get("vocab_size", len(tokenizer))
    config = UMT5Config(**{**sizes.umt5, "vocab_size": vocab}, feed_forward_proj="gated-gelu",
                        layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1)
    encoder = base.fill_random(meta_build(lambda: UMT5EncoderModel(config)), SEED, device, dtype)
    copies: dict[int, torch.Tensor] = {}  # the tied embedding copied once
    for tensor in encoder.state_dict().values():
        if tensor.data_ptr() not in copies:
            copies[tensor.data_ptr()] = tensor.to("cpu")
    on_cpu = meta_build(lambda: UMT5EncoderModel(config))
    on_cpu.load_state_dict({k: copies[v.data_ptr()] for k, v in encoder.state_dict().items()}, assign=True)
    gpu = bridge.ModelHandle(encoder, "text_encoder", family="wan", tokenizer=tokenizer)
    cpu = WanTextEncoderMemoryOptions().apply(
        bridge.ModelHandle(on_cpu.eval(), "text_encoder", family="wan", tokenizer=tokenizer), "cpu", 0.0)[0]

    def encode(handle):
        def run(warm_up: bool):
            positive, _ = WanTextEncode().encode(handle, PROMPT, WAN_DEFAULT_NEGATIVE, False)
            return positive[0][0]

        return run

    columns = [
        Column("gpu", f"pack: Wan Text Encode, UMT5 on {device.type}", ("wan_text_encoder",), run=encode(gpu),
               prepare=gpu.load, module=lambda: gpu.module, baseline="gpu"),
        Column("cpu", "pack: Wan Text Encode, UMT5 on the CPU (Text Encoder Memory Options)", ("wan_text_encoder",),
               run=encode(cpu), prepare=cpu.load, module=lambda: cpu.module, baseline="gpu", compare="gpu"),
    ]
    setting = (f"UMT5-XXL{' (tiny)' if sizes.smoke else ''}, prompt and negative prompt, 512 tokens each, "
               f"{_name(dtype)}, {torch.get_num_threads()} CPU threads")
    title = "Wan text encoder (UMT5) on the GPU vs on the CPU"
    return columns, {"wan_text_encoder": {"title": title, "setting": setting}}, None


GROUPS = {"wan": wan_columns, "sana": sana_columns, "sprint": sprint_columns, "dcae": dcae_columns,
          "text_encoder": text_encoder_columns}
CASES = {"wan": ("wan_t2v", "wan_low_vram", "wan_step_cache", "wan_attention"), "sana": ("sana",),
         "sprint": ("sana_sprint",), "dcae": ("dcae_decode",), "text_encoder": ("wan_text_encoder",)}


# ---------------------------------------------------------------------------------------------- report


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _fmt(value, digits=3, suffix=""):
    return "–" if value is None else f"{value:.{digits}g}{suffix}"


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [f"# GPU suite: {meta['device']}, {meta['date']}", "",
             f"torch {meta['torch']} (CUDA {meta['cuda']}), diffusers {meta['diffusers']}, transformers "
             f"{meta['transformers']}; pack {meta['commit']}; {meta['total_s']:.0f} s in all"
             f"{'; --smoke (tiny models)' if meta['smoke'] else ''}.", ""]
    for case_id, case in report["cases"].items():
        lines += [f"## {case['title']} (`{case_id}`)", "", case["setting"] + ".", ""]
        if case.get("note"):
            lines += [f"*{case['note']}*", ""]
        if case.get("skipped"):
            lines += [f"Not run: {case['skipped']}.", ""]
            continue
        lines += ["| path | runs | wall s | s/step | est. 50 steps s | peak VRAM GiB | vs baseline | max\\|d\\| | "
                  "blocks ran / forwards | notes |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in case["rows"]:
            notes = "; ".join(n for n in (row["skipped"], row["note"], row["peak_vram_note"]) if n)
            ran = f"{row['blocks_ran']} / {row['forwards']}" if row.get("forwards") is not None else ""
            ratio = "" if row["ratio"] is None else f"{row['ratio']:.3f} ({row['baseline']})"
            diff = "" if row["max_rel_diff"] is None else f"{row['max_rel_diff']:.2g} ({row['compared_with']})"
            lines.append(f"| {row['label']} | {row['runs']} | {_fmt(row['wall_s'], 4)} | {_fmt(row['step_s'], 4)} | "
                         f"{_fmt(row['est_50_steps_s'], 4)} | {_fmt(row['peak_vram_gib'], 4)} | {ratio} | "
                         f"{diff} | {ran} | {notes} |")
        lines.append("")
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", base.ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def main() -> None:
    args = _parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_suite.py needs a CUDA device; use --smoke on CPU")
    start = time.perf_counter()
    deadline = start + args.time_limit
    os.environ["SANA_WAN_DEVICE"] = str(device)  # the standalone bridge's load device
    bridge.step_callback = _timed_step_callback(bridge.step_callback)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16  # as the pack computes on each
    sizes = sizes_for(args.smoke)
    os.makedirs(args.out, exist_ok=True)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": _version("diffusers"),
            "transformers": _version("transformers"), "commit": _commit(), "smoke": args.smoke,
            "pack_in_comfyui": bridge.in_comfyui(), "args": {k: v for k, v in vars(args).items() if k != "worker"},
            "time_limit_hit": False}
    print(f"gpu_suite on {meta['device']}: torch {torch.__version__}, {'smoke' if args.smoke else 'full'} sizes",
          flush=True)
    cases: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as folder:
        for group in args.only:
            if time.perf_counter() > deadline:
                for case_id in CASES[group]:
                    cases[case_id] = {"title": case_id, "setting": "", "rows": [],
                                      "skipped": "the --time-limit was reached before this case"}
                meta["time_limit_hit"] = True
                continue
            print(f"[{group}] building", flush=True)
            built = time.perf_counter()
            try:
                columns, group_cases, close = GROUPS[group](args, sizes, device, dtype, folder)
            except Exception as error:  # a case that cannot be built is reported, the others still run
                traceback.print_exc()
                for case_id in CASES[group]:
                    cases[case_id] = {"title": case_id, "setting": "", "rows": [],
                                      "skipped": f"building failed: {type(error).__name__}: {error}"}
                continue
            print(f"[{group}] built in {time.perf_counter() - built:.1f} s", flush=True)
            try:
                note = run_group(columns, args.reps, device, deadline)
            finally:
                if close is not None:
                    close()
            print(f"[{group}] done in {time.perf_counter() - built:.1f} s", flush=True)
            meta["time_limit_hit"] |= note is not None
            by_key = {c.key: c for c in columns}
            for case_id, case in group_cases.items():
                rows = [summarise(c, by_key, device, case.get("baseline")) for c in columns if case_id in c.cases]
                cases[case_id] = {**case, "note": note, "rows": rows}
            del columns, by_key, group_cases
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    meta["total_s"] = time.perf_counter() - start
    report = {"meta": meta, "cases": cases}
    with open(os.path.join(args.out, "gpu_suite.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "gpu_suite.md"), "w") as f:
        f.write(markdown(report))
    print(f"\nwrote {args.out}/gpu_suite.json and gpu_suite.md in {meta['total_s']:.0f} s", flush=True)


def _version(package: str) -> str:
    return getattr(__import__(package), "__version__", "unknown")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder for gpu_suite.json and gpu_suite.md")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: every case and path, quickly")
    parser.add_argument("--steps", type=int, default=None, help="Wan sampling steps per run (default 3; smoke 2)")
    parser.add_argument("--sana-steps", type=int, default=None, help="Sana steps (default 20; smoke 2)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up (>= 3)")
    parser.add_argument("--budget-gb", type=float, default=4.0, help="weight budget of the low-VRAM rows")
    parser.add_argument("--comfyui", help="a ComfyUI source tree, for the native KSampler rows")
    parser.add_argument("--comfyui-python", default=sys.executable, help="the Python that runs ComfyUI")
    parser.add_argument("--device", help="cuda (default) or cpu (default with --smoke)")
    parser.add_argument("--time-limit", type=float, default=450.0, help="seconds; cases stop between repetitions")
    parser.add_argument("--only", nargs="+", choices=tuple(GROUPS), default=tuple(GROUPS), help="groups to run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return args
    if not args.out:
        parser.error("--out FOLDER is required")
    args.steps = args.steps or (2 if args.smoke else 3)
    args.sana_steps = args.sana_steps or (2 if args.smoke else 20)
    if args.steps < 2 or args.reps < 1:
        parser.error("--steps must be at least 2 (seconds per step need two step ends), --reps at least 1")
    return args


if __name__ == "__main__":
    main()
