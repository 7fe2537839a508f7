"""Peak system RAM of a Wan2.2 A14B two-expert run: the pack (experts memory-mapped from their files, one on the
device at a time) against holding both experts' weights in process memory, as a loader that reads or converts the
files does.

The parent writes two expert checkpoints: the A14B expert architecture (5120 wide, 40 heads, ffn 13824) with
--layers of its 40 blocks, seeded random bf16 weights, in the Comfy-Org layout (original key names). Each mode runs
in its own child process (peak counted from its start) and samples --steps of flow_euler with both experts through
the Wan Sampler node (model_2, boundary 0.875, shift 12), from the same noise and random [1, 512, 4096] prompts:
- pack: the loader node's way: bf16 files loaded in bf16, the tensors stay views of the files' memory maps
  (safetensors), so only the pages the run reads are resident, as reclaimable page cache;
- both_in_ram: the same experts with every weight copied into process memory first (what loading a .pth without
  mmap, a dtype conversion or a dequantisation does): both experts held at once.
Per mode it reports the peak resident set (VmHWM: file pages the process touched count too), the peak of the
anonymous part (RssAnon, sampled every 10 ms: memory the kernel cannot drop) and the final latent's largest
difference from the pack's. On this CPU-only machine the device is the RAM itself, so "one expert on the device"
shows as the anonymous figure; on a GPU the same run keeps one expert's weights in VRAM (bridge.hand_over).

    python bench/wan22_expert_memory.py --layers 4 --steps 4   # two 4-block A14B experts (2 x 3.2 GB files)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sampler_vs_pipeline import ROOT, fill_random  # noqa: E402  (imports the pack as sana_wan)

sys.path.insert(0, os.path.join(ROOT, "tests"))
from tiny_wan import diffusers_to_original  # noqa: E402  (diffusers -> original Wan keys, ComfyUI's layout)

from sana_wan import comfy_bridge as bridge  # noqa: E402
from sana_wan.loaders.wan_transformer import load_wan_transformer  # noqa: E402
from sana_wan.nodes.wan import WanSampler  # noqa: E402
from sana_wan.samplers.conditioning import make_conditioning  # noqa: E402

# Wan-AI/Wan2.2-T2V-A14B-Diffusers transformer/config.json (and transformer_2/): the Wan2.1 T2V 14B shape
A14B_EXPERT = {"patch_size": (1, 2, 2), "num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 16,
               "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 13824, "num_layers": 40,
               "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads"}
MODES = ("pack", "both_in_ram")
SEED, SHIFT, CFG, CFG_2, LATENT = 7, 12.0, 4.0, 3.0, (1, 16, 2, 8, 8)
_GB = 2**30


def main() -> None:
    args = _parse_args()
    if args.child:
        print(json.dumps(_measure(args)))
        return
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        paths = [os.path.join(folder, f"wan2.2_t2v_{name}_noise_random.safetensors") for name in ("high", "low")]
        for seed, path in enumerate(paths):
            _write_expert(path, args.layers, seed)
        results = {mode: _run_child(args, mode, paths, folder) for mode in MODES}
        reference = torch.load(os.path.join(folder, "pack.pt"))
        for mode in MODES:
            latent = torch.load(os.path.join(folder, f"{mode}.pt"))
            results[mode]["max_diff"] = (latent - reference).abs().max().item()
    print(f"two experts of {args.layers} A14B blocks, {results['pack']['files_gb']:.2f} GB of bf16 files together, "
          f"{args.steps} steps:")
    for mode, r in results.items():
        print(f"  {mode:12s} peak RSS {r['peak_rss'] / _GB:6.2f} GB, peak anonymous {r['peak_anon'] / _GB:6.2f} GB, "
              f"max|Δ| vs pack {r['max_diff']:.3g}")
    pack, both = results["pack"], results["both_in_ram"]
    print(f"  pack / both_in_ram: peak RSS {pack['peak_rss'] / both['peak_rss']:.2f}, "
          f"peak anonymous {pack['peak_anon'] / both['peak_anon']:.2f}")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4, help="blocks per expert (the real experts have 40)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tmp", default=None, help="folder for the two checkpoint files")
    parser.add_argument("--child", default=None, choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def _write_expert(path: str, layers: int, seed: int) -> None:
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config({**A14B_EXPERT, "num_layers": layers})
    model = fill_random(model, seed, dtype=torch.bfloat16)
    save_file({k: v.contiguous() for k, v in diffusers_to_original(model.state_dict()).items()}, path)


def _run_child(args: argparse.Namespace, mode: str, paths: list[str], folder: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", mode, "--layers", str(args.layers), "--steps",
               str(args.steps), "--paths", *paths, "--out", os.path.join(folder, f"{mode}.pt")]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _measure(args: argparse.Namespace) -> dict:
    peak_anon, stop = [0], threading.Event()

    def sample_anon() -> None:
        while not stop.wait(0.01):
            peak_anon[0] = max(peak_anon[0], _status("RssAnon"))

    threading.Thread(target=sample_anon, daemon=True).start()
    experts = []
    for path in args.paths:  # what the loader node does with the file
        transformer, variant = load_wan_transformer(path, torch.bfloat16)
        handle = bridge.ModelHandle(transformer, "diffusion", family="wan", variant=variant)
        if args.child == "both_in_ram":
            with torch.no_grad():
                for parameter in handle.module.parameters():
                    parameter.data = parameter.data.clone()
        experts.append(handle)
    generator = torch.Generator().manual_seed(SEED)
    embeds = torch.randn(2, 512, 4096, generator=generator)
    mask = torch.ones(1, 512, dtype=torch.int64)
    positive, negative = make_conditioning(embeds[:1], mask), make_conditioning(embeds[1:], mask)
    with torch.inference_mode():
        (latent,) = WanSampler().sample(experts[0], positive, negative, {"samples": torch.zeros(LATENT)}, SEED,
                                        args.steps, CFG, SHIFT, "flow_euler", "default", 1.0, model_2=experts[1],
                                        boundary=0.875, cfg_2=CFG_2)
    stop.set()
    peak_anon[0] = max(peak_anon[0], _status("RssAnon"))
    torch.save(latent["samples"], args.out)
    return {"peak_rss": _status("VmHWM"), "peak_anon": peak_anon[0],
            "files_gb": sum(os.path.getsize(p) for p in args.paths) / _GB}


if __name__ == "__main__":
    main()
