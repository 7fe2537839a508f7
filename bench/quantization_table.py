"""Size on disk, peak memory and error of one denoising step of a real-size transformer stored as bf16, fp8_e4m3fn,
GGUF Q8_0, Q5_K and Q4_K, computed in bf16 on the CPU.

Each case builds its transformer once with the released architecture (wan: Wan2.1-T2V-1.3B, sana: Sana 1600M) and
seeded random weights (uniform +-1/sqrt(fan-in) matrices and kernels, 1 + U(+-0.01) norm scales, U(+-0.01) biases and
tables, as sampler_vs_pipeline.py, generated straight into bf16), and writes it into --dir in every format, in the
original key layout:
- bf16: a plain safetensors file (the Comfy-Org repackaged layout, without prefix);
- fp8_e4m3fn: the same with every matrix / kernel weight cast to fp8 (plain, unscaled), loaded with the fp8 weight
  storage (the Linear / Conv weights stay fp8 in memory, upcast to bf16 for each call; the layers diffusers keeps
  in higher precision are dequantised at load);
- Q8_0, Q5_K, Q4_K: GGUF files in the real files' conventions (tests/gguf_files.py: city96's for Wan, quantized 1x1
  convolutions for Sana); Q8_0 is gguf-py's quantizer, the K-quants that file's plain min/max quantizer, which is
  somewhat less precise than llama.cpp's (its files are a little better than the K-quant rows here). Sana's
  2240-wide matrices are no whole number of 256-value K-quant blocks: its Q5_K / Q4_K files hold those in
  llama.cpp's fallbacks Q5_1 / Q5_0 (only the 2304-wide caption matrices are K-quants).
Each format is then loaded in a fresh process (`load_*_transformer(path, torch.bfloat16, storage)`), which runs one
transformer forward, i.e. one denoising step without CFG, on fixed seeded inputs (wan: latent [1,16,1,30,52] = one
240x416 frame, 512 text tokens, 60 of them non-zero; sana: latent [1,32,16,16] = 512 px, 300 text tokens, 120
unmasked; timestep 500) under torch.inference_mode. Columns:
- file: the file's size; weights: bytes of the loaded model's parameters and buffers;
- peak RSS: the process's peak resident memory during the step (VmHWM, reset right before it), interpreter,
  torch and activations included; the weights are memory-mapped and enter memory during the step;
- max |d|, rel. L2: the step's output against the bf16 file's (max |out - ref|, and ||out - ref|| / ||ref||).

    /work/venv/bin/python bench/quantization_table.py                   # Wan 1.3B, files in a temp folder
    /work/venv/bin/python bench/quantization_table.py --case sana --dir /tmp/qbench --keep
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SEED = 1234
FORMATS = ("bf16", "fp8_e4m3fn", "Q8_0", "Q5_K", "Q4_K")


def memory(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _paths() -> None:
    sys.path[:0] = [HERE, os.path.join(ROOT, "tests")]
    from sampler_vs_pipeline import import_pack  # the pack as `sana_wan`, as tests/conftest.py does

    import_pack()


def random_bf16_model(case: str):
    """The case's transformer in bf16 with sampler_vs_pipeline.py's seeded initialisation, one tensor at a time."""
    import torch
    from diffusers import SanaTransformer2DModel, WanTransformer3DModel
    from sampler_vs_pipeline import SANA_1600M, WAN_T2V_1_3B

    model_class, config = (WanTransformer3DModel, WAN_T2V_1_3B) if case == "wan" else \
        (SanaTransformer2DModel, SANA_1600M)
    with torch.device("meta"):
        model = model_class.from_config(config).to(torch.bfloat16)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            values = torch.empty(param.shape)
            if param.ndim >= 2:
                bound = param[0].numel() ** -0.5
                values.uniform_(-bound, bound, generator=generator)
            else:
                values.uniform_(-0.01, 0.01, generator=generator)
                if name.endswith("weight"):
                    values.add_(1.0)
            param.copy_(values)
    return model.eval()


def write_files(case: str, folder: str) -> dict[str, str]:
    """The case's model in every format (files already in `folder` are reused)."""
    import torch
    from gguf_files import T, write_sana_gguf, write_wan_gguf
    from safetensors.torch import save_file
    from tiny_sana import diffusers_to_original as sana_original
    from tiny_wan import diffusers_to_original as wan_original

    paths = {f: os.path.join(folder, f"{case}_{f}.{'gguf' if f.startswith('Q') else 'safetensors'}")
             for f in FORMATS}
    if all(os.path.isfile(p) for p in paths.values()):
        return paths
    start = time.perf_counter()
    model = random_bf16_model(case)
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    original = wan_original(state_dict) if case == "wan" else sana_original(state_dict, model.config)
    save_file(original, paths["bf16"])
    fp8 = {k: v.to(torch.float8_e4m3fn) if k.endswith(".weight") and v.ndim >= 2 else v for k, v in original.items()}
    save_file(fp8, paths["fp8_e4m3fn"])
    del fp8, original, state_dict
    for name in ("Q8_0", "Q5_K", "Q4_K"):
        write = write_wan_gguf if case == "wan" else write_sana_gguf
        write(model, paths[name], T[name])
        print(f"  [{case}] wrote {name} ({time.perf_counter() - start:.0f} s)", flush=True)
    return paths


def step_inputs(case: str) -> dict:
    import torch

    generator = torch.Generator().manual_seed(SEED + 1)
    if case == "wan":
        text = torch.randn(1, 512, 4096, generator=generator)
        text[:, 60:] = 0
        return {"hidden_states": torch.randn(1, 16, 1, 30, 52, generator=generator).bfloat16(),
                "encoder_hidden_states": text.bfloat16(), "timestep": torch.tensor([500.0])}
    mask = torch.zeros(1, 300, dtype=torch.int64)
    mask[:, :120] = 1
    return {"hidden_states": torch.randn(1, 32, 16, 16, generator=generator).bfloat16(),
            "encoder_hidden_states": torch.randn(1, 300, 2304, generator=generator).bfloat16(),
            "encoder_attention_mask": mask, "timestep": torch.tensor([500.0])}


def child_step(case: str, fmt: str, path: str, out: str) -> dict:
    _paths()
    import torch
    from sana_wan.loaders.sana_transformer import load_sana_transformer
    from sana_wan.loaders.wan_transformer import load_wan_transformer

    load = load_wan_transformer if case == "wan" else load_sana_transformer
    storage = torch.float8_e4m3fn if fmt == "fp8_e4m3fn" else None
    model, _ = load(path, torch.bfloat16, storage=storage)
    inputs = step_inputs(case)
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}.values()
    weights = sum(t.numel() * t.element_size() for t in tensors)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak) to the current RSS
    start = time.perf_counter()
    with torch.inference_mode():
        output = model(**inputs, return_dict=False)[0]
    seconds, peak = time.perf_counter() - start, memory("VmHWM")
    torch.save(output.float(), out)
    return {"weights": weights, "peak": peak, "seconds": seconds}


def in_child(*args: str) -> dict:
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args], capture_output=True,
                            text=True)
    if result.returncode:
        sys.exit(f"child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench(case: str, folder: str) -> list[dict]:
    import torch

    paths = write_files(case, folder)
    gc.collect()
    rows = []
    for fmt in FORMATS:
        out = os.path.join(folder, f"{case}_{fmt}_output.pt")
        result = in_child(case, fmt, paths[fmt], out)
        output = torch.load(out)
        reference = output if fmt == "bf16" else rows[0]["output"]
        diff = output - reference
        rows.append({"format": fmt, "file": os.path.getsize(paths[fmt]), **result, "output": output,
                     "max": diff.abs().max().item(), "l2": (diff.norm() / reference.norm()).item(),
                     "ref_max": reference.abs().max().item()})
        print(f"  [{case}] {fmt}: step {result['seconds']:.1f} s, peak RSS {result['peak'] / 2**30:.2f} GiB", flush=True)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return print(json.dumps(child_step(*sys.argv[2:6])))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("wan", "sana", "both"), default="wan")
    parser.add_argument("--dir", help="folder for the model files (default: a temp folder, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the files in --dir for the next run")
    args = parser.parse_args()
    _paths()
    folder = args.dir or tempfile.mkdtemp(prefix="quantization_table_")
    os.makedirs(folder, exist_ok=True)
    try:
        tables = {case: bench(case, folder) for case in (("wan", "sana") if args.case == "both" else (args.case,))}
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    for case, rows in tables.items():
        name = "Wan2.1 T2V 1.3B" if case == "wan" else "Sana 1600M"
        print(f"\n{name}, one step in bf16 on CPU (output max |ref| {rows[0]['ref_max']:.3g})\n")
        print("| storage | file | weights in memory | peak RSS during the step | max abs diff vs bf16 | rel. L2 vs bf16 |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['format']} | {r['file'] / 2**30:.2f} GiB | {r['weights'] / 2**30:.2f} GiB | "
                  f"{r['peak'] / 2**30:.2f} GiB | {r['max']:.3g} | {r['l2']:.2e} |")


if __name__ == "__main__":
    main()
