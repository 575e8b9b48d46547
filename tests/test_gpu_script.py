"""The prepared GPU check (benchmarks/gpu_kernels.py) runs every code path here: --prepare carries vLLM's kernel
sources and the tokenizer (what the device machine gets), then a --smoke run loads the kernels from that copy only
(no vLLM import), checks them against the reference, times decode and prefill, and prunes a random checkpoint through
the CLI — under the Triton interpreter, so the GPU run has no untried line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_gpu_script_prepares_and_runs_every_path_under_the_interpreter(tmp_path):
    carry, out = tmp_path / "carry", tmp_path / "out"
    script = str(ROOT / "benchmarks" / "gpu_kernels.py")
    subprocess.run([sys.executable, script, "--prepare", str(carry)], check=True, capture_output=True)
    assert (carry / "vllm/model_executor/layers/mamba/ops/mamba_ssm.py").is_file()
    assert (carry / "gpt-neox-20b.json").is_file()
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path)}
    r = subprocess.run([sys.executable, script, "--carry", str(carry), "--smoke", "--out", str(out)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((out / "gpu_kernels.json").read_text())
    assert report["vllm_version"].startswith("0.32.0")
    assert all(c["ok"] for c in report["correctness"])
    assert set(report["decode_ms"]) == {"1", "2"} and all(v > 0 for row in report["decode_ms"].values()
                                                            for v in row.values())
    assert len(report["int8_correctness"]) == 2 and all(c["ok"] for c in report["int8_correctness"])
    assert all(v > 0 for row in report["state_update_ms"].values() for per_n in row.values() for v in per_n.values())
    assert "## The int8 state" in (out / "gpu_kernels.md").read_text()
    p = report["prune"]  # the default recipe: per-layer sizes at the uniform cut's channels (64 per layer) + refit
    assert p["rc"] == 0 and p["allocation"] == "adaptive" and p["refit"]
    assert sum(p["state_sizes"]) == 64 * len(p["state_sizes"]) and p["state_size"] == max(p["state_sizes"])
    assert "## Pruning on the device" in (out / "gpu_kernels.md").read_text()
    # without a GPU and without the interpreter it refuses in one line
    r = subprocess.run([sys.executable, script, "--carry", str(carry), "--out", str(out)],
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TRITON_INTERPRET": "0"},
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no CUDA device" in r.stderr
