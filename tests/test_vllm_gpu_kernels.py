"""vLLM's own GPU kernels for Mamba2 (Triton: causal conv1d prefill/update, chunked SSD prefill, selective state
update with state indices and a null block) at every state size the product emits, under the Triton interpreter,
against the reference scan. Runs in a subprocess of its own (TRITON_INTERPRET=1, no CUDA devices): the kernels are
loaded from the installed wheel's files without importing vLLM, so no engine shares the process.

Time on this machine (2 cores): about 2 minutes for the 23 cases, 10 s for the mismatch check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _run(tmp_path: Path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "kernels.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "ghost_vllm.kernels", "--json", str(out), *args], env=env,
                          capture_output=True, text=True, timeout=900)
    assert out.is_file(), proc.stdout + proc.stderr
    return proc.returncode, json.loads(out.read_text())


def test_vllm_kernels_equal_reference_scan_at_product_sizes(tmp_path):
    from ghost_vllm.kernels.cases import product_state_sizes

    rc, report = _run(tmp_path)
    bad = [(c["label"][:80], c["errors"]) for c in report["cases"] if not c["ok"]]
    assert rc == 0 and not bad, bad
    assert report["interpreter"] and report["vllm_version"].startswith("0.32.0")
    cases = report["cases"]
    for c in cases:  # all four kernels compared, the null block untouched
        assert set(c["errors"]) == {"conv1d_fn.out", "conv1d_fn.state", "ssd.out", "ssd.final_state",
                                    "conv1d_update.out", "conv1d_update.state", "ssu.out", "ssu.state",
                                    "null_block.changed"}
        assert max(c["errors"].values()) <= 1e-5
    covered = {c["state_size"] for c in cases}
    # every N' the product emits for a d_state-128 model (shipped recipes, sweep, adaptive per-layer, minimum) and
    # the dense sizes of the released families (Falcon-H1 256, Zamba2 64 → 32 at κ 0.5)
    assert set(product_state_sizes(128)) <= covered
    assert {256, 32} <= covered
    assert {120, 48, 72, 64, 40} <= covered  # the shipped adaptive checkpoint's per-layer sizes
    assert {104, 80, 56} <= covered  # balanced truncation's Hankel ranks (reference model), nowhere else emitted
    assert {c["n_groups"] for c in cases} >= {1, 2, 4, 8}  # n_groups 1/2/8 and their TP 2/4 shards
    labels = " ".join(c["label"] for c in cases)
    for tp in ("TP2", "TP4"):
        assert tp in labels
    # pruned sizes have no tuned SSU launch config: they run vLLM's default one (d_state ≤ 64: BLOCK_SIZE_M 8)
    assert {tuple(c["ssu_launch"]) for c in cases if c["state_size"] <= 64 and c["state_size"] > 32} == {(8, 4)}


def test_kernel_check_fails_when_reference_state_size_differs(tmp_path):
    rc, report = _run(tmp_path, "--mismatch", "--limit", "2")
    assert rc == 1 and report["failed"] == 2
    for c in report["cases"]:
        assert c["errors"]["ssd.out"] > 1e-3 and c["errors"]["ssu.out"] > 1e-3
        assert c["errors"]["conv1d_fn.out"] < 1e-5  # the conv does not depend on the reference's N'
