"""Load time and memory of our transformer loaders on real-size fp16 single files vs reading the file's bytes.

Each case writes its checkpoint ONCE (seeded random fp16 weights, the released architecture, original / Comfy-Org
key layout, no `model.diffusion_model.` prefix) into --dir (a fresh temp folder by default, removed at the end):
- wan: Wan2.1 T2V 1.3B as wan2.1_t2v_1.3B_fp16.safetensors (825 tensors, ~2.6 GiB);
- sana: Sana 1600M 1024px in the original release layout as .safetensors (fused qkv / kv, pos_embed, null caption).
The page cache cannot be dropped without root, so both sides are measured WARM: the file is read once first, then
every measurement runs in a fresh child process (imports done before the clock starts), --reps of each, the order
alternating each repetition:
- read: `open(path, 'rb').read()` into memory;
- load: `load_*_transformer(path, torch.float16)`; then touch: one element of every page of every parameter and
  buffer (safetensors maps the file, so the bytes enter memory when first used, not at load time);
- peak RSS: the peak (VmHWM, reset before the call) over load + touch minus the RSS before, over tensor bytes.
The loaded model is checked: parameter count equal to the architecture built on the meta device, fp16 everywhere
except the float32 modules diffusers keeps (Wan time embedder / modulation). Medians are printed; goals:
load / read <= 1.3 and peak RSS / weights <= 1.2.

    /work/venv/bin/python bench/load_time.py                        # both cases, 3 repetitions
    /work/venv/bin/python bench/load_time.py --case wan --reps 5 --dir /tmp/load_bench --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = {"wan": "wan2.1_t2v_1.3B_fp16.safetensors", "sana": "Sana_1600M_1024px.safetensors"}
SEED = 1234


def memory(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes (ru_maxrss would carry the parent's peak over the exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def child_read(path: str) -> dict:
    start = time.perf_counter()
    with open(path, "rb") as f:
        data = f.read()
    return {"read": time.perf_counter() - start, "bytes": len(data)}


def child_load(case: str, path: str) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from sampler_vs_pipeline import import_pack  # the pack as `sana_wan`, as tests/conftest.py does

    import_pack()
    import torch
    from sana_wan.loaders.checkpoint import read_safetensors_header
    from sana_wan.loaders.sana_transformer import load_sana_transformer
    from sana_wan.loaders.wan_transformer import load_wan_transformer

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak) to the current RSS
    before, start = memory("VmRSS"), time.perf_counter()
    model, _ = (load_wan_transformer if case == "wan" else load_sana_transformer)(path, torch.float16)
    loaded = time.perf_counter() - start
    with torch.no_grad():  # one element of every 4 KiB page: brings mapped bytes into memory as a forward would
        total = sum(float(t.reshape(-1)[:: 4096 // t.element_size()].float().sum())
                    for t in (*model.parameters(), *model.buffers()))
    touched, peak = time.perf_counter() - start, memory("VmHWM") - before
    header = read_safetensors_header(path)
    weights = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    params = dict(model.named_parameters())
    keep = type(model)._keep_in_fp32_modules or []
    with torch.device("meta"):
        want = sum(p.numel() for p in type(model).from_config(model.config).parameters())
    stray = [n for n, p in params.items() if p.dtype != torch.float16 and not any(m in n.split(".") for m in keep)]
    count = lambda dtypes: sum(p.numel() for p in params.values() if p.dtype in dtypes)
    return {"load": loaded, "touch": touched, "peak": peak, "weights": weights, "want": want, "stray": stray,
            "finite": bool(torch.isfinite(torch.tensor(total))), "fp16": count({torch.float16}),
            "params": count({p.dtype for p in params.values()})}


def write_checkpoint(case: str, path: str) -> None:
    """Seeded random fp16 weights in the original key layout, written with safetensors' save_file."""
    import torch
    from safetensors.torch import save_file

    sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.join(ROOT, "tests")]
    from diffusers import SanaTransformer2DModel, WanTransformer3DModel
    from sampler_vs_pipeline import SANA_1600M, WAN_T2V_1_3B
    from tiny_sana import diffusers_to_original as sana_original
    from tiny_wan import diffusers_to_original as wan_original

    with torch.device("meta"):  # the key maps only rename and concatenate, so they run on meta tensors
        if case == "wan":
            original = wan_original(WanTransformer3DModel.from_config(WAN_T2V_1_3B).state_dict())
        else:
            model = SanaTransformer2DModel.from_config(SANA_1600M)
            original = sana_original(model.state_dict(), model.config)
    shapes = {k: v.shape for k, v in original.items()}
    generator = torch.Generator().manual_seed(SEED)
    tensors = {k: (torch.randn(s, generator=generator) * 0.05).half() for k, s in sorted(shapes.items())}
    save_file(tensors, path)


def in_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench(case: str, folder: str, reps: int) -> dict:
    path = os.path.join(folder, FILES[case])
    if not os.path.isfile(path):
        start = time.perf_counter()
        write_checkpoint(case, path)
        print(f"[{case}] wrote {path} in {time.perf_counter() - start:.1f} s", flush=True)
    with open(path, "rb") as f:  # warm the page cache
        while f.read(1 << 26):
            pass
    runs = {"read": [], "load": []}
    for rep in range(reps):
        for which in (("read", "load") if rep % 2 == 0 else ("load", "read")):
            r = in_child("read", path) if which == "read" else in_child("load", path, case)
            runs[which].append(r)
            detail = f"{r['read']:.2f} s" if which == "read" else \
                f"{r['load']:.2f} s, with touch {r['touch']:.2f} s, peak RSS +{r['peak'] / 2**30:.2f} GiB"
            print(f"  {case} {which:4s} {detail}", flush=True)
    last = runs["load"][-1]
    want = last["want"]
    ok = last["params"] == want and not last["stray"] and last["finite"]
    print(f"  {case}: {last['params']:,} parameters (architecture: {want:,}), {last['fp16'] / last['params']:.3%} "
          f"fp16, not fp16 outside diffusers' fp32 modules: {last['stray'][:3] or 'none'} -> {'ok' if ok else 'FAIL'}")
    med = {k: statistics.median(r[k] for r in runs["load"]) for k in ("load", "touch", "peak")}
    read = statistics.median(r["read"] for r in runs["read"])
    return {"case": case, "gib": os.path.getsize(path) / 2**30, "read": read, **med,
            "peak_ratio": med["peak"] / last["weights"], "ok": ok}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        result = child_read(sys.argv[3]) if sys.argv[2] == "read" else child_load(sys.argv[4], sys.argv[3])
        return print(json.dumps(result))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("wan", "sana", "both"), default="both")
    parser.add_argument("--reps", type=int, default=3, help="child processes of each kind")
    parser.add_argument("--dir", help="folder for the checkpoint files (default: a temp folder, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the files in --dir for the next run")
    args = parser.parse_args()
    folder = args.dir or tempfile.mkdtemp(prefix="load_time_")
    os.makedirs(folder, exist_ok=True)
    try:
        rows = [bench(case, folder, args.reps) for case in (("wan", "sana") if args.case == "both" else (args.case,))]
    finally:
        if not args.keep:
            for name in FILES.values():
                if os.path.isfile(os.path.join(folder, name)):
                    os.remove(os.path.join(folder, name))
            shutil.rmtree(folder, ignore_errors=True) if not args.dir else None
    print(f"\n{'case':5s} {'file GiB':>8s} {'read s':>7s} {'load s':>7s} {'load/read':>9s} {'load+touch s':>12s} "
          f"{'(load+touch)/read':>17s} {'peak RSS/weights':>16s}")
    for r in rows:
        print(f"{r['case']:5s} {r['gib']:8.2f} {r['read']:7.2f} {r['load']:7.2f} {r['load'] / r['read']:9.2f} "
              f"{r['touch']:12.2f} {r['touch'] / r['read']:17.2f} {r['peak_ratio']:16.2f} "
              f"{'ok' if r['ok'] else 'FAIL'}{'' if r['touch'] / r['read'] <= 1.3 else ' (time above 1.3 goal)'}"
              f"{'' if r['peak_ratio'] <= 1.2 else ' (memory above 1.2 goal)'}")
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
