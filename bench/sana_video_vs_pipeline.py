"""Wall time of our Sana-Video sampler (`sample_sana_video`) vs diffusers' SanaVideoPipeline on the real-size
transformer, and how our sampler's time grows with the frame count.

The transformer is SANA-Video 2B 480p's architecture (the config of scripts/write_manifests.py) with seeded random
float32 weights (bench/sampler_vs_pipeline.py's `random_model`; the RoPE tables recomputed as the loader does).
Both sides get the same prompt embeddings ([1,300,2304] with a mask), noise, solver (flow DPM-Solver++ 2M, the
pipeline's), shift 8, CFG 6 (uncond and cond in one batch) and steps, no text encoder and no VAE
(`output_type="latent"`). Runs: one warm-up of each, then --reps repetitions interleaved, under
torch.inference_mode with torch's default thread count. It prints the medians of wall time and of the process's CPU
time (all threads; on a machine other jobs share, CPU time is the steadier measure), ours/pipeline and the largest
difference between the outputs (relative to the pipeline's largest value; above 1e-4 the script exits 1).

Then the frames table: our sampler alone, one run of --table-steps steps for each of --table-frames at the same
size. Linear attention and the convolutional feed-forward make a step cost proportional to the tokens
(latent frames x H/16 x W/16): seconds per thousand tokens stay flat where softmax attention would grow with them.

    /work/main/.venv/bin/python bench/sana_video_vs_pipeline.py          # 192x128, 9 frames, 2 steps; 9/17/33
    /work/main/.venv/bin/python bench/sana_video_vs_pipeline.py --width 320 --height 192 --table-frames 9,17,33,65
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import sampler_vs_pipeline as base  # bench/ is the script's folder, first on sys.path; it imports the pack
import torch
from diffusers import SanaVideoPipeline, SanaVideoTransformer3DModel

from sana_wan.loaders.sana_video_transformer import DEFAULT_SHIFT, _materialise_rope
from sana_wan.samplers.conditioning import make_conditioning
from sana_wan.samplers.noise import comfy_noise
from sana_wan.samplers.sana_video import sample_sana_video
from sana_wan.samplers.schedulers import make_scheduler
from sana_wan.vae.wan import to_model_space

SEED, TOLERANCE, CFG, SOLVER = 1234, 1e-4, 6.0, "flow_dpmpp_2m"
# SANA-Video 2B 480p (scripts/write_manifests.py SANA_VIDEO_2B_480P, diffusers' conversion script's config).
SANA_VIDEO_2B = {
    "in_channels": 16, "out_channels": 16, "num_attention_heads": 20, "attention_head_dim": 112, "num_layers": 20,
    "num_cross_attention_heads": 20, "cross_attention_head_dim": 112, "cross_attention_dim": 2240,
    "caption_channels": 2304, "mlp_ratio": 3.0, "attention_bias": False, "sample_size": 30, "patch_size": (1, 2, 2),
    "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
}


def latent_shape(width: int, height: int, frames: int) -> tuple[int, ...]:
    return 1, 16, (frames - 1) // 4 + 1, height // 8, width // 8


def tokens(shape: tuple[int, ...]) -> int:
    return shape[2] * (shape[3] // 2) * (shape[4] // 2)


class Case:
    def __init__(self):
        start = time.perf_counter()
        self.model = base.random_model(SanaVideoTransformer3DModel, SANA_VIDEO_2B, SEED)
        _materialise_rope(self.model)
        print(f"SANA-Video 2B built in {time.perf_counter() - start:.1f} s", flush=True)
        (self.pos, self.pos_mask), (self.neg, self.neg_mask) = (base.embeddings(300, 2304, 120, 1, False),
                                                                base.embeddings(300, 2304, 20, 2, False))
        self.pipe = SanaVideoPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=self.model,
                                      scheduler=None)
        self.pipe.set_progress_bar_config(disable=True)

    def pipeline(self, width: int, height: int, frames: int, steps: int) -> torch.Tensor:
        self.pipe.scheduler = make_scheduler(SOLVER, DEFAULT_SHIFT)
        return self.pipe(prompt_embeds=self.pos, prompt_attention_mask=self.pos_mask, negative_prompt=None,
                         negative_prompt_embeds=self.neg, negative_prompt_attention_mask=self.neg_mask,
                         latents=comfy_noise(latent_shape(width, height, frames), SEED), height=height, width=width,
                         frames=frames, num_inference_steps=steps, guidance_scale=CFG, use_resolution_binning=False,
                         output_type="latent").frames

    def ours(self, width: int, height: int, frames: int, steps: int) -> torch.Tensor:
        """Raw Wan-VAE latents -> the transformer's space, where the pipeline returns them."""
        latent = {"samples": torch.zeros(latent_shape(width, height, frames))}
        return to_model_space(sample_sana_video(self.model, latent, make_conditioning(self.pos, self.pos_mask),
                                                make_conditioning(self.neg, self.neg_mask), SEED, steps, CFG,
                                                DEFAULT_SHIFT, SOLVER))


def timed(fn) -> tuple[float, float, torch.Tensor]:
    """(wall seconds, CPU seconds of this process, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def ratio(case: Case, args) -> dict:
    times, worst = {(which, clock): [] for which in ("pipeline", "ours") for clock in ("wall", "cpu")}, 0.0
    size = (args.width, args.height, args.frames, args.steps)
    for rep in range(args.reps + 1):  # rep 0 is the warm-up
        order = ("pipeline", "ours") if rep % 2 == 0 else ("ours", "pipeline")
        outs = {}
        for which in order:
            wall, cpu, outs[which] = timed(lambda: getattr(case, which)(*size))
            print(f"  {which:8s} {wall:8.2f} s wall {cpu:8.2f} s CPU{'' if rep else ' (warm-up)'}", flush=True)
            if rep:
                times[which, "wall"].append(wall)
                times[which, "cpu"].append(cpu)
        ref = outs["pipeline"]
        diff = (outs["ours"] - ref).abs().max().item() if torch.isfinite(outs["ours"]).all() else float("inf")
        worst = max(worst, diff / ref.abs().max().item())
    median = {key: statistics.median(values) for key, values in times.items()}
    return {**median, "rel": worst}


def frames_table(case: Case, args) -> list[tuple[int, int, float, float]]:
    rows = []
    for frames in args.table_frames:
        shape = latent_shape(args.width, args.height, frames)
        wall, cpu, _ = timed(lambda: case.ours(args.width, args.height, frames, args.table_steps))
        rows.append((frames, tokens(shape), wall, cpu))
        print(f"  {frames:3d} frames ({tokens(shape)} tokens): {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=192, help="multiple of 32 (the pipeline's rule)")
    parser.add_argument("--height", type=int, default=128, help="multiple of 32")
    parser.add_argument("--frames", type=int, default=9, help="4n+1 frames for the ratio")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--reps", type=int, default=1, help="timed repetitions of each, after one warm-up")
    parser.add_argument("--table-frames", type=lambda s: [int(x) for x in s.split(",")], default=[9, 17, 33])
    parser.add_argument("--table-steps", type=int, default=1)
    args = parser.parse_args()

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} (default), float32 on CPU, "
          f"{args.width}x{args.height}, {SOLVER}, CFG {CFG}", flush=True)
    case = Case()
    print(f"ratio: {args.frames} frames, {args.steps} steps, {args.reps} reps + 1 warm-up", flush=True)
    r = ratio(case, args)
    print(f"frames table: {args.table_steps} step(s) each", flush=True)
    rows = frames_table(case, args)
    label = f"sana-video 2B {args.frames}x{args.width}x{args.height} {args.steps} steps"
    print(f"\n{label}: max|d|/max|ref| {r['rel']:.2e} {'ok' if r['rel'] <= TOLERANCE else 'FAIL'}")
    print(f"{'clock':6s} {'pipeline s':>10s} {'ours s':>8s} {'ratio':>6s}")
    for clock in ("wall", "cpu"):
        pipeline, ours = r["pipeline", clock], r["ours", clock]
        print(f"{clock:6s} {pipeline:10.2f} {ours:8.2f} {ours / pipeline:6.3f}")
    print(f"\n{'frames':>6s} {'latent frames':>13s} {'tokens':>7s} {'wall s':>8s} {'CPU s':>8s} "
          f"{'CPU s per 1k tokens':>20s}")
    for frames, count, wall, cpu in rows:
        print(f"{frames:6d} {(frames - 1) // 4 + 1:13d} {count:7d} {wall:8.2f} {cpu:8.2f} {1000 * cpu / count:20.2f}")
    sys.exit(0 if r["rel"] <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
