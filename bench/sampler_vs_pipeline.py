"""Wall time of our samplers (`sample_sana`, `sample_wan`) vs the diffusers pipelines on the same real-size models.

Each case builds its transformer ONCE with the released architecture (Sana 1600M; Wan2.1-T2V-1.3B) and seeded
random float32 weights (built on the meta device, then `to_empty` and filled: much faster than the normal
constructor's init; the non-persistent Wan RoPE tables are recomputed as the loader does). Both sides get the same
prompt embeddings, noise, solver, shift, CFG and steps, no text encoder and no VAE (`output_type="latent"`):
- sana: 512 px (latent [1,32,16,16]), CFG 4.5 (uncond and cond in one batch, as SanaPipeline), embeddings
  [1,300,2304] with an attention mask, Sana's flow DPM-Solver++ 2M at shift 3;
- wan: 9 frames 160x160 (latent [1,16,3,20,20]), CFG 6 (cond and uncond as two forwards, as WanPipeline),
  embeddings [1,512,4096] zero past the prompt, UniPC at the 1.3B's default shift 8.
Runs: one warm-up of each, then --reps repetitions interleaved (the order alternates each repetition), all under
torch.inference_mode with torch's default thread count. It prints the medians, ours/pipeline (goal <= 1.02) and
the largest difference between the two outputs (relative to the pipeline output's largest value; above 1e-4 the
case reports FAIL and the script exits 1).

    /work/venv/bin/python bench/sampler_vs_pipeline.py                       # both cases, 2 steps, 2 repetitions
    /work/venv/bin/python bench/sampler_vs_pipeline.py --case sana --sana-px 256 --reps 3
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import sys
import time

import torch
from diffusers import SanaPipeline, SanaTransformer2DModel, WanPipeline, WanTransformer3DModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED, TOLERANCE = 1234, 1e-4

# The Sana_1600M config as loaders/sana_transformer.py infers it from the released 1.6B files (512 / 1024 px).
SANA_1600M = {
    "in_channels": 32, "out_channels": 32, "num_attention_heads": 70, "attention_head_dim": 32, "num_layers": 20,
    "num_cross_attention_heads": 20, "cross_attention_head_dim": 112, "cross_attention_dim": 2240,
    "caption_channels": 2304, "mlp_ratio": 2.5, "attention_bias": False, "sample_size": 32, "patch_size": 1,
    "interpolation_scale": None, "qk_norm": None, "guidance_embeds": False, "timestep_scale": 1.0,
}
# Wan2.1-T2V-1.3B as loaders/wan_transformer.py infers it from the released files.
WAN_T2V_1_3B = {
    "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30, "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None, "added_kv_proj_dim": None,
}


def import_pack():
    """The repository root as the package `sana_wan` (as tests/conftest.py does)."""
    if "sana_wan" in sys.modules:
        return sys.modules["sana_wan"]
    spec = importlib.util.spec_from_file_location("sana_wan", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules["sana_wan"] = module
    spec.loader.exec_module(module)
    return module


import_pack()
from sana_wan.samplers.conditioning import make_conditioning  # noqa: E402
from sana_wan.samplers.noise import comfy_noise  # noqa: E402
from sana_wan.samplers.schedulers import make_scheduler  # noqa: E402


def random_model(model_class, config: dict, seed: int, device="cpu", dtype: torch.dtype = torch.float32):
    """`model_class(config)` with seeded random weights (see `fill_random`), float32 on the CPU by default."""
    with torch.device("meta"):
        model = model_class.from_config(config)
    return fill_random(model, seed, device, dtype)


def fill_random(model, seed: int, device="cpu", dtype: torch.dtype = torch.float32):
    """A model built on the meta device, materialised on `device` in `dtype` with seeded random weights drawn there:
    uniform(+-1/sqrt(fan_in)) for matrices and kernels (PyTorch's default bound), 1 + U(+-0.01) for norm scales,
    U(+-0.01) for biases; batch-norm statistics 0 (running_var 1). Non-persistent buffers (Wan's RoPE tables) are
    left for the caller to compute."""
    torch.nn.Module.to(model, dtype=dtype)  # on the meta device, nothing allocated (diffusers' own .to warns)
    model.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                bound = param[0].numel() ** -0.5
                param.uniform_(-bound, bound, generator=generator)
            else:
                param.uniform_(-0.01, 0.01, generator=generator)
                if name.endswith("weight"):
                    param.add_(1.0)
        for name, buffer in model.named_buffers():
            if buffer.is_floating_point() or name.endswith("num_batches_tracked"):
                buffer.fill_(1.0 if name.endswith("running_var") else 0.0)
    return model.eval()


def embeddings(length: int, width: int, valid: int, seed: int, zero_padded: bool):
    embeds = torch.randn(1, length, width, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(1, length, dtype=torch.int64)
    mask[:, :valid] = 1
    return (embeds * mask[..., None] if zero_padded else embeds), mask


def sana_case(args):
    from sana_wan.loaders.sana_transformer import sana_variant
    from sana_wan.samplers.sana import SANA_LATENT_SCALE, sample_sana

    model = random_model(SanaTransformer2DModel, SANA_1600M, SEED)
    side = args.sana_px // 32
    shape, shift, solver = (1, 32, side, side), sana_variant(dict(model.config)).default_shift, "flow_dpmpp_2m"
    (pos, pos_mask), (neg, neg_mask) = embeddings(300, 2304, 120, 1, False), embeddings(300, 2304, 20, 2, False)
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model, scheduler=None)
    pipe.set_progress_bar_config(disable=True)
    noise = comfy_noise(shape, SEED)

    def pipeline():
        return pipe(prompt_embeds=pos, prompt_attention_mask=pos_mask, negative_prompt=None,
                    negative_prompt_embeds=neg, negative_prompt_attention_mask=neg_mask, latents=noise.clone(),
                    height=args.sana_px, width=args.sana_px, num_inference_steps=args.steps, guidance_scale=4.5,
                    use_resolution_binning=False, output_type="latent").images

    def ours():  # raw DC-AE latents -> the transformer's space, where the pipeline returns them
        return sample_sana(model, {"samples": torch.zeros(shape)}, make_conditioning(pos, pos_mask),
                           make_conditioning(neg, neg_mask), SEED, args.steps, 4.5, shift, solver) * SANA_LATENT_SCALE

    label = f"sana 1.6B {args.sana_px}px {solver} cfg 4.5"
    return label, pipe, lambda: make_scheduler(solver, shift), pipeline, ours


def wan_case(args):
    from sana_wan.loaders.wan_transformer import _materialise_rope, wan_variant
    from sana_wan.samplers.wan import sample_wan
    from sana_wan.vae.wan import to_model_space

    model = random_model(WanTransformer3DModel, WAN_T2V_1_3B, SEED)
    _materialise_rope(model)  # non-persistent RoPE tables: garbage after to_empty, recomputed as the loader does
    shape, shift, solver = (1, 16, 3, 20, 20), wan_variant(dict(model.config)).default_shift, "flow_unipc"
    (pos, pos_mask), (neg, neg_mask) = embeddings(512, 4096, 60, 3, True), embeddings(512, 4096, 25, 4, True)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=model, vae=None, scheduler=None)
    pipe.set_progress_bar_config(disable=True)
    noise = comfy_noise(shape, SEED)

    def pipeline():
        return pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=noise.clone(), height=160, width=160,
                    num_frames=9, num_inference_steps=args.steps, guidance_scale=6.0, output_type="latent").frames

    def ours():  # raw Wan-VAE latents -> the transformer's (normalised) space, where the pipeline returns them
        return to_model_space(sample_wan(model, {"samples": torch.zeros(shape)}, make_conditioning(pos, pos_mask),
                                         make_conditioning(neg, neg_mask), SEED, args.steps, 6.0, shift, solver))

    label = f"wan 1.3B 9x160x160 {solver} cfg 6"
    return label, pipe, lambda: make_scheduler(solver, shift), pipeline, ours


def timed(fn):
    start = time.perf_counter()
    with torch.inference_mode():
        out = fn()
    return time.perf_counter() - start, out


def bench(case, args) -> dict:
    start = time.perf_counter()
    label, pipe, scheduler, pipeline, ours = case(args)
    print(f"[{label}] model built in {time.perf_counter() - start:.1f} s", flush=True)
    times = {"pipeline": [], "ours": []}
    worst = 0.0

    def run(which, record=True):
        nonlocal worst
        pipe.scheduler = scheduler()  # a fresh scheduler for the pipeline (ours makes its own inside the call)
        seconds, out = timed(pipeline if which == "pipeline" else ours)
        print(f"  {which:8s} {seconds:8.2f} s{'' if record else ' (warm-up)'}", flush=True)
        if record:
            times[which].append(seconds)
        return out

    for rep in range(args.reps + 1):  # rep 0 is the warm-up
        order = ("pipeline", "ours") if rep % 2 == 0 else ("ours", "pipeline")
        outs = {which: run(which, record=rep > 0) for which in order}
        ref = outs["pipeline"]
        diff = (outs["ours"] - ref).abs().max().item()
        if not (torch.isfinite(ref).all() and torch.isfinite(outs["ours"]).all()):
            diff = float("inf")
        worst = max(worst, diff / ref.abs().max().item())
    del pipe
    gc.collect()
    p, o = statistics.median(times["pipeline"]), statistics.median(times["ours"])
    return {"case": label, "pipeline": p, "ours": o, "ratio": o / p, "rel": worst, "ok": worst <= TOLERANCE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("sana", "wan", "both"), default="both")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2, help="timed repetitions of each, after one warm-up")
    parser.add_argument("--sana-px", type=int, default=512, help="Sana image side (multiple of 32)")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} (default), float32 on CPU, "
          f"{args.steps} steps, {args.reps} reps + 1 warm-up", flush=True)
    cases = {"sana": [sana_case], "wan": [wan_case], "both": [sana_case, wan_case]}[args.case]
    rows = [bench(case, args) for case in cases]
    print(f"\n{'case':38s} {'pipeline s':>10s} {'ours s':>8s} {'ratio':>6s} {'max|d|/max|ref|':>16s}")
    for r in rows:
        print(f"{r['case']:38s} {r['pipeline']:10.2f} {r['ours']:8.2f} {r['ratio']:6.3f} {r['rel']:16.2e} "
              f"{'ok' if r['ok'] else 'FAIL'}{'' if r['ratio'] <= 1.02 else ' (ratio above the 1.02 goal)'}")
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
