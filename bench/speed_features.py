"""Wall time of each speed option (samplers/speed.py) against the plain run, on real-size random-weight models.

The models and inputs are bench/sampler_vs_pipeline.py's: Sana 1600M at 512 px (CFG 4.5, uncond and cond in one
batch) and Wan2.1-T2V-1.3B (CFG 6, cond and uncond as two forwards; 5 frames 128x128 by default, small for a CPU
that other processes share), float32 on CPU, seeded random weights. Each case runs, in one process: the plain
sampler, then each option alone -
- every attention backend that runs here (for Sana: the SDPA kernel of its cross-attention only),
- each step cache at a typical threshold, with the fraction of block-stack computations it skipped (a forward-call
  count on the last block),
- torch.compile of the blocks: one warm-up run that compiles (its time is printed), then the timed run,
- for Wan, cond and uncond batched in one forward -
then the plain run once more. Each run reports wall time and the process's CPU time; the ratios are against the
mean of the two plain runs (their spread shows the noise). The CPU time is the steadier figure on a CPU that other
processes share, hence one thread by default (with two, a thread waiting for its descheduled partner spins and
counts). max|d| is the largest difference from the first plain output, relative to its largest value. On random
weights a cache's difference says how much it changed, not how good the picture is; MagCache's skips follow the
model's calibrated curve alone, First Block Cache's and SeaCache's follow what the model computes.

    /work/venv/bin/python bench/speed_features.py                    # both cases
    /work/venv/bin/python bench/speed_features.py --case wan --wan-steps 20 --only cache
"""

from __future__ import annotations

import argparse
import gc
import time

import sampler_vs_pipeline as base  # bench/ is the script's folder, first on sys.path; it imports the pack
import torch
from diffusers import SanaTransformer2DModel, WanTransformer3DModel

from sana_wan.samplers.conditioning import make_conditioning
from sana_wan.samplers.speed import SpeedOptions, attention_choices

# Typical thresholds: diffusers' First Block Cache default range, MagCache's authors' E012 for the 1.3B, SeaCache's
# diffusers default.
CACHES = {"sana": {"first_block": 0.1}, "wan": {"first_block": 0.1, "mag": 0.12, "sea": 0.25}}
FEATURES = ("attention", "cache", "compile", "batched")


class Calls:
    """Forward calls of a module (a forward pre-hook), to count how often the last block really ran."""

    def __init__(self, module):
        self.count = 0
        module.register_forward_pre_hook(self._seen)

    def _seen(self, module, args):
        self.count += 1


def sana_case(args):
    from sana_wan.loaders.sana_transformer import sana_variant
    from sana_wan.samplers.sana import sample_sana

    model = base.random_model(SanaTransformer2DModel, base.SANA_1600M, base.SEED)
    side = args.sana_px // 32
    shape, shift = (1, 32, side, side), sana_variant(dict(model.config)).default_shift
    pos, pos_mask = base.embeddings(300, 2304, 120, 1, False)
    neg, neg_mask = base.embeddings(300, 2304, 20, 2, False)

    def run(speed=None):
        return sample_sana(model, {"samples": torch.zeros(shape)}, make_conditioning(pos, pos_mask),
                           make_conditioning(neg, neg_mask), base.SEED, args.sana_steps, 4.5, shift, "flow_dpmpp_2m",
                           speed=speed)

    label = f"Sana 1.6B {args.sana_px}px, {args.sana_steps} steps flow_dpmpp_2m, CFG 4.5"
    return label, model, model.transformer_blocks[-1].ff, run


def wan_case(args):
    from sana_wan.loaders.wan_transformer import _materialise_rope, wan_variant
    from sana_wan.samplers.wan import sample_wan

    model = base.random_model(WanTransformer3DModel, base.WAN_T2V_1_3B, base.SEED)
    _materialise_rope(model)
    shape = (1, 16, (args.wan_frames - 1) // 4 + 1, args.wan_px // 8, args.wan_px // 8)
    shift = wan_variant(dict(model.config)).default_shift
    (pos, pos_mask), (neg, neg_mask) = base.embeddings(512, 4096, 60, 3, True), base.embeddings(512, 4096, 25, 4, True)

    def run(speed=None, batched=False):
        return sample_wan(model, {"samples": torch.zeros(shape)}, make_conditioning(pos, pos_mask),
                          make_conditioning(neg, neg_mask), base.SEED, args.wan_steps, 6.0, shift, "flow_unipc",
                          batched=batched, speed=speed)

    label = f"Wan 1.3B {args.wan_frames}x{args.wan_px}x{args.wan_px}, {args.wan_steps} steps flow_unipc, CFG 6"
    return label, model, model.blocks[-1].ffn, run


def timed(run, **kwargs):
    """(wall s, CPU s of this process, output)."""
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = run(**kwargs)
    return time.perf_counter() - start, time.process_time() - cpu, out


def bench(family, case, args) -> None:
    start = time.perf_counter()
    label, model, last_block, run = case(args)
    print(f"\n[{label}] model built in {time.perf_counter() - start:.1f} s", flush=True)
    forwards, computed = Calls(model), Calls(last_block)
    rows = []

    def measure(name, skipped=False, **kwargs):
        forwards.count = computed.count = 0
        wall, cpu, out = timed(run, **kwargs)
        skip = f"{1 - computed.count / forwards.count:.0%} of {forwards.count}" if skipped else ""
        rows.append((name, wall, cpu, out, skip))
        print(f"  {name:34s} {wall:8.1f} s wall {cpu:8.1f} s CPU {skip}", flush=True)

    measure("plain")
    if "attention" in args.only:
        for backend in attention_choices(family, "cpu", (torch.float32,))[1:]:
            measure(f"attention {backend}", speed=SpeedOptions(attention=backend))
    if "cache" in args.only:
        for cache, threshold in CACHES[family].items():
            measure(f"cache {cache} {threshold}", skipped=True, speed=SpeedOptions(cache=cache, threshold=threshold))
    warm_up = 0.0
    if "compile" in args.only:
        warm_up, _, _ = timed(run, speed=SpeedOptions(compile=True))
        print(f"  (compile warm-up run {warm_up:.1f} s)", flush=True)
        measure("compile (after warm-up)", speed=SpeedOptions(compile=True))
    if family == "wan" and "batched" in args.only:
        measure("cond+uncond batched", batched=True)
    measure("plain again")

    wall, cpu = (rows[0][1] + rows[-1][1]) / 2, (rows[0][2] + rows[-1][2]) / 2
    reference = rows[0][3]
    compiled = f"; compile warm-up {warm_up:.1f} s wall" if warm_up else ""
    print(f"\n{label}: plain {rows[0][1]:.1f} s and {rows[-1][1]:.1f} s wall, {rows[0][2]:.1f} s and "
          f"{rows[-1][2]:.1f} s CPU{compiled}")
    print(f"{'option':34s} {'wall s':>8s} {'ratio':>6s} {'CPU s':>8s} {'ratio':>6s} {'max|d|/max|ref|':>16s}  skipped")
    for name, seconds, cpu_seconds, out, skip in rows[1:-1]:
        diff = ((out - reference).abs().max() / reference.abs().max()).item()
        print(f"{name:34s} {seconds:8.1f} {seconds / wall:6.2f} {cpu_seconds:8.1f} {cpu_seconds / cpu:6.2f} "
              f"{diff:16.1e}  {skip}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("sana", "wan", "both"), default="both")
    parser.add_argument("--wan-steps", type=int, default=6)
    parser.add_argument("--wan-frames", type=int, default=5, help="video frames (4n+1)")
    parser.add_argument("--wan-px", type=int, default=128, help="video side (multiple of 16)")
    parser.add_argument("--sana-steps", type=int, default=3)
    parser.add_argument("--sana-px", type=int, default=512, help="Sana image side (multiple of 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--only", nargs="+", choices=FEATURES, default=FEATURES, help="the options to time")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32 on CPU", flush=True)
    for family, case in (("wan", wan_case), ("sana", sana_case)):
        if args.case in (family, "both"):
            bench(family, case, args)
            gc.collect()  # one real-size model in memory at a time


if __name__ == "__main__":
    main()
