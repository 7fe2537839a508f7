"""Peak VRAM and time of Wan2.1 1.3B text-to-video sampling in each low-VRAM mode, against diffusers' WanPipeline
with `enable_model_cpu_offload` (the memory issue's benchmark 4). Real figures need a CUDA GPU; `--device cpu` is a
smoke run of the same code (peak resident memory instead of VRAM, no offloading to speak of).

The parent writes ONE checkpoint: the released 1.3B architecture (or --layers of it) with seeded random bf16 weights
(built on the meta device, then filled), in the diffusers single-file layout. Each mode then runs in its own child
process (fresh allocator, peak counted from the start), loading that file with the pack's loader and sampling
--steps of flow_unipc at shift 8, CFG 6 (cond and uncond as two forwards, as WanPipeline) from the same noise and
the same random [1, 512, 4096] prompt embeddings, no text encoder and no VAE:
- default: bf16 weights, loaded whole on the GPU;
- fp8: weight_storage fp8_e4m3fn (Linear weights in fp8, cast to bf16 per layer on each call);
- partial: bf16 weights with a --budget-gb weight budget (Model Memory Options): the largest layers within it on the
  GPU, the rest in RAM, copied in per call;
- fp8+partial: both;
- diffusers_offload: WanPipeline(transformer=the same file loaded by the pack).enable_model_cpu_offload(),
  output_type="latent" (the reference);
- diffusers_group_offload: diffusers' block-level group offloading (one block per group, side-stream prefetch) on the
  same transformer, sampled by the pack: the alternative to ComfyUI's partial loading.
Per mode it reports the peak (GPU: torch.cuda.max_memory_allocated; CPU: VmHWM), seconds per step (after load and
warm-up: the first step is not counted) and the largest difference of the final latent from the default mode's,
relative to its largest value, then each mode's peak and time over the reference's.

    python bench/low_vram_wan.py                                         # GPU: 480p, 81 frames, 10 steps
    python bench/low_vram_wan.py --device cpu --layers 2 --frames 5 --height 64 --width 64 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sampler_vs_pipeline import WAN_T2V_1_3B, import_pack  # noqa: E402

MODES = ("default", "fp8", "partial", "fp8+partial", "diffusers_offload", "diffusers_group_offload")
REFERENCE = "diffusers_offload"
SEED, SHIFT, CFG, SOLVER = 1234, 8.0, 6.0, "flow_unipc"


def main() -> None:
    args = _parse_args()
    if args.child:
        print(json.dumps(_measure(args)))
        return
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "wan2.1_t2v_random.safetensors")
        _write_checkpoint(path, args.layers)
        results = {mode: _run_child(args, mode, path, folder) for mode in args.modes}
        default = torch.load(os.path.join(folder, "default.pt")) if "default" in results else None
        for mode in results:
            latent = torch.load(os.path.join(folder, f"{mode}.pt"))
            results[mode]["diff"] = None if default is None else float(
                (latent - default).abs().max() / default.abs().max())
    _report(args, results)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=81, help="video frames, 4n+1")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--layers", type=int, default=WAN_T2V_1_3B["num_layers"], help="blocks (30 = the 1.3B)")
    parser.add_argument("--budget-gb", type=float, default=1.0, help="weight budget of the partial modes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frames % 4 != 1 or args.height % 16 or args.width % 16 or args.steps < 2:
        parser.error("--frames must be 4n+1, --height / --width multiples of 16, --steps at least 2.")
    return args


def _write_checkpoint(path: str, layers: int) -> None:
    """Seeded random bf16 weights of the 1.3B architecture (normal, std 1/sqrt(fan-in); norm scales 1)."""
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config({**WAN_T2V_1_3B, "num_layers": layers})
    generator = torch.Generator().manual_seed(SEED)
    state_dict = {}
    for name, param in model.state_dict().items():
        if param.ndim >= 2:
            tensor = torch.randn(param.shape, generator=generator) * param[0].numel() ** -0.5
        else:
            tensor = torch.ones(param.shape) if name.endswith("norm2.weight") else torch.randn(
                param.shape, generator=generator) * 0.02
        state_dict[name] = tensor.to(torch.bfloat16)
    save_file(state_dict, path)


def _run_child(args: argparse.Namespace, mode: str, path: str, folder: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--child", mode, "--path", path,
               "--out", os.path.join(folder, f"{mode}.pt")]
    env = {**os.environ, "SANA_WAN_DEVICE": args.device}  # the standalone bridge's load device
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"The {mode} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure(args: argparse.Namespace) -> dict:
    import_pack()
    from sana_wan import comfy_bridge as bridge
    from sana_wan.loaders.cast_layers import set_execution_device
    from sana_wan.loaders.wan_transformer import load_wan_transformer
    from sana_wan.samplers.conditioning import make_conditioning
    from sana_wan.samplers.noise import comfy_noise
    from sana_wan.samplers.schedulers import make_scheduler
    from sana_wan.samplers.wan import sample_wan
    from sana_wan.vae.wan import to_raw

    device, mode = torch.device(args.device), args.child
    storage = torch.float8_e4m3fn if "fp8" in mode else None
    transformer, _ = load_wan_transformer(args.path, torch.bfloat16, storage)
    generator = torch.Generator().manual_seed(SEED)
    pos, neg = (torch.randn(1, 512, 4096, generator=generator) for _ in range(2))
    mask = torch.ones(1, 512, dtype=torch.int64)
    shape = (1, 16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    noise = comfy_noise(shape, SEED)
    step_times = []

    def timed(step, total, x0):
        _synchronize(device)
        step_times.append(time.perf_counter())

    with torch.inference_mode():
        if mode == REFERENCE:
            pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=None,
                               scheduler=make_scheduler(SOLVER, SHIFT))
            if device.type == "cuda":
                pipe.enable_model_cpu_offload(device=device)
            pipe.set_progress_bar_config(disable=True)
            latent = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=noise.clone(), height=args.height,
                          width=args.width, num_frames=args.frames, num_inference_steps=args.steps,
                          guidance_scale=CFG, output_type="latent",
                          callback_on_step_end=lambda p, i, t, kw: (timed(i, 0, None), kw)[1]).frames
            latent = to_raw(latent.float())
        else:
            if mode == "diffusers_group_offload":
                transformer.enable_group_offload(device, torch.device("cpu"), "block_level", num_blocks_per_group=1,
                                                 use_stream=device.type == "cuda")
                set_execution_device(transformer, device)
            else:
                handle = bridge.ModelHandle(transformer, "diffusion", family="wan")
                if "partial" in mode:
                    handle = bridge.with_memory_options(handle, weight_budget=int(args.budget_gb * 2**30))
                transformer = handle.load()
            latent = sample_wan(transformer, {"samples": torch.zeros(shape)}, make_conditioning(pos, mask),
                                make_conditioning(neg, mask), SEED, args.steps, CFG, SHIFT, SOLVER, callback=timed)
    _synchronize(device)
    torch.save(latent.float().cpu(), args.out)
    seconds = (step_times[-1] - step_times[0]) / (len(step_times) - 1)
    return {"peak": _peak(device), "seconds_per_step": seconds}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _report(args: argparse.Namespace, results: dict) -> None:
    what = "peak VRAM" if args.device.startswith("cuda") else "peak RSS (CPU smoke run: no VRAM figures)"
    print(f"Wan2.1 T2V {args.layers}-layer 1.3B-wide, {args.frames} frames {args.width}x{args.height}, {args.steps} "
          f"steps {SOLVER}, CFG {CFG}, bf16, on {args.device}; weight budget {args.budget_gb} GiB; {what}")
    reference = results.get(REFERENCE)
    for mode, r in results.items():
        ratios = ""
        if reference:
            ratios = (f"  peak x{r['peak'] / reference['peak']:.2f}, "
                      f"time x{r['seconds_per_step'] / reference['seconds_per_step']:.2f} vs {REFERENCE}")
        diff = "" if r["diff"] is None else f", latent diff {r['diff']:.1e}"
        print(f"  {mode:24s} {r['peak'] / 2**30:7.2f} GiB  {r['seconds_per_step']:8.2f} s/step{diff}{ratios}")


if __name__ == "__main__":
    main()
