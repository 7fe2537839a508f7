"""Peak memory of decoding one Wan2.1 video with the real-size VAE: whole frames vs spatial tiles (`decode_wan`).

Each mode runs in its own child process (a fresh interpreter, so neither inherits the other's allocator state). The
child builds `AutoencoderKLWan()` (the Wan2.1 config, 127M parameters) with seeded random weights and random raw
latents (memory does not depend on the values), notes its memory, decodes once and reports how far the peak rose:
- cpu: peak resident set size (`ru_maxrss`, what the OS had to hand over: activations, the causal cache, the output
  video, allocator overhead) minus the resident set size just before decoding.
- cuda: `torch.cuda.max_memory_allocated()` minus the allocation before decoding (tensors only; the caching
  allocator's reserve on top is reported as well).
Both figures include the decoded video itself (float32, on the CPU), which tiling cannot shrink. The decoder
runs one latent frame (4 video frames) at a time, so 5 frames already reach a long video's activation peak;
more frames add only their output (about twice, while diffusers concatenates the frames).

    python bench/wan_vae_decode_memory.py                                    # 81 frames 832x480, CPU: very slow
    python bench/wan_vae_decode_memory.py --frames 17 --height 240 --width 416
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time

import torch
from diffusers import AutoencoderKLWan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main() -> None:
    args = _parse_args()
    if args.child:
        print(json.dumps(_measure(args)))
        return
    results = {mode: _run_child(mode) for mode in ("untiled", "tiled")}
    untiled, tiled = results["untiled"], results["tiled"]
    print(f"Wan2.1 VAE decode, {args.frames} frames {args.width}x{args.height}, {args.dtype} on {args.device}; "
          f"output video {_mib(untiled['output_bytes'])}")
    for mode, r in results.items():
        extra = f", allocator reserve {_mib(r['reserved_increase'])}" if "reserved_increase" in r else ""
        print(f"  {mode:8s} peak increase {_mib(r['peak_increase'])} in {r['seconds']:.1f} s{extra}")
    print(f"  tiled / untiled = {tiled['peak_increase'] / untiled['peak_increase']:.2f} "
          f"(tiles {args.tile_size} px, overlap {args.tile_overlap} px)")
    if max(args.height, args.width) <= args.tile_size:
        print("  note: the frame fits in one tile, so the tiled run decoded it whole.")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=81, help="video frames, 4n+1")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--tile-overlap", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", choices=("untiled", "tiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frames % 4 != 1 or args.height % 8 or args.width % 8:
        parser.error("--frames must be 4n+1, --height and --width multiples of 8.")
    return args


def _run_child(mode: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--child", mode]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"The {mode} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure(args: argparse.Namespace) -> dict:
    wan = _import_pack()
    device = torch.device(args.device)
    torch.manual_seed(0)
    with torch.device(device):
        vae = AutoencoderKLWan().to(DTYPES[args.dtype]).eval().requires_grad_(False)
    latents = wan.to_raw(torch.randn(1, 16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8))
    before = _usage(device)
    start = time.perf_counter()
    frames = wan.decode_wan(vae, latents, tile="on" if args.child == "tiled" else "off",
                            tile_size=args.tile_size, tile_overlap=args.tile_overlap)
    seconds = time.perf_counter() - start
    after = _usage(device)
    result = {"peak_increase": after["peak"] - before["now"], "seconds": seconds,
              "output_bytes": frames.numel() * frames.element_size()}
    if after["peak"] <= before["peak"]:
        print("warning: the decode did not raise the process's earlier peak; the figure is an upper bound.",
              file=sys.stderr)
    if device.type == "cuda":
        result["reserved_increase"] = after["reserved"] - before["reserved"]
    return result


def _usage(device: torch.device) -> dict:
    """Bytes in use now and at the peak so far: tensors on a GPU, the resident set on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return {"now": torch.cuda.memory_allocated(device), "peak": torch.cuda.max_memory_allocated(device),
                "reserved": torch.cuda.max_memory_reserved(device)}
    with open("/proc/self/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return {"now": rss_kib * 1024, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _import_pack():
    """The repository root as the package `sana_wan`, as the tests import it (its modules import relatively)."""
    spec = importlib.util.spec_from_file_location("sana_wan", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    package = importlib.util.module_from_spec(spec)
    sys.modules["sana_wan"] = package
    spec.loader.exec_module(package)
    from sana_wan.vae import wan
    return wan


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


if __name__ == "__main__":
    main()
