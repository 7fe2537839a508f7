"""bench/gpu_suite.py --smoke: every case and every path that runs on a CPU, tiny models, as CI runs it."""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_suite.py")
CASES = ("wan_t2v", "wan_low_vram", "wan_step_cache", "wan_attention", "sana", "sana_sprint", "dcae_decode",
         "wan_text_encoder")
# Paths that run on any CPU (the others need a GPU kernel, a package, calibrated MagCache ratios or ComfyUI).
RUN_ON_CPU = {
    "wan_t2v": {"pack", "pipeline"},
    "wan_low_vram": {"pack", "fp8", "budget", "fp8_budget"},
    "wan_step_cache": {"pack", "first_block"},
    "wan_attention": {"pack"},
    "sana": {"pack", "pipeline"},
    "sana_sprint": {"pack_1", "pipeline_1", "pack_2", "pipeline_2"},
    "dcae_decode": {"pack", "diffusers"},
    "wan_text_encoder": {"gpu", "cpu"},
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite")
    done = subprocess.run([sys.executable, SCRIPT, "--smoke", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(out / "gpu_suite.json") as f:
        return json.load(f), (out / "gpu_suite.md").read_text()


def test_every_case_is_measured(smoke):
    report, _ = smoke
    assert set(report["cases"]) == set(CASES)
    for case_id, case in report["cases"].items():
        assert not case.get("skipped"), (case_id, case.get("skipped"))
        ran = {row["key"] for row in case["rows"] if row["runs"]}
        assert RUN_ON_CPU[case_id] <= ran, (case_id, ran)


def test_rows_have_numbers_or_a_reason(smoke):
    report, _ = smoke
    for case_id, case in report["cases"].items():
        for row in case["rows"]:
            if row["skipped"]:
                assert isinstance(row["skipped"], str) and row["skipped"], (case_id, row)
                continue
            assert row["runs"] == 3 and len(row["wall_s_runs"]) == 3, (case_id, row)
            assert row["wall_s"] > 0 and row["ratio"] > 0, (case_id, row)
            # GPU-only figures are null on the CPU, with the reason.
            assert row["peak_vram_bytes"] is None and "CPU" in row["peak_vram_note"], (case_id, row)
            if case_id.startswith("wan_") and case_id != "wan_text_encoder":
                assert row["step_s"] > 0, (case_id, row)


def test_the_pack_and_its_references_compute_the_same(smoke):
    """Each comparison is of like with like: float32 on the CPU, the pack equals the reference pipelines."""
    report, _ = smoke
    for case_id, key in (("wan_t2v", "pack"), ("sana", "pack"), ("sana_sprint", "pack_1"),
                         ("sana_sprint", "pack_2"), ("dcae_decode", "pack")):
        row = next(r for r in report["cases"][case_id]["rows"] if r["key"] == key)
        assert row["max_rel_diff"] is not None and row["max_rel_diff"] < 1e-4, (case_id, row)


def test_native_comfyui_rows_say_why_they_did_not_run(smoke):
    report, _ = smoke
    rows = {row["key"]: row for row in report["cases"]["wan_t2v"]["rows"]}
    for key in ("native", "pack_comfyui"):
        assert "--comfyui" in rows[key]["skipped"]


def test_markdown_table_is_written(smoke):
    report, text = smoke
    for case_id, case in report["cases"].items():
        assert f"## {case['title']} (`{case_id}`)" in text
    assert text.count("| path | runs | wall s |") == len(CASES)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_the_full_run_needs_a_cuda_device(tmp_path):
    done = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert "needs a CUDA device; use --smoke on CPU" in done.stderr
    assert not os.listdir(tmp_path)
