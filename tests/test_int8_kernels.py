"""The int8 SSM-state Triton kernels (``ghost_vllm.kernels.int8_state``: fused decode state update, dequantize /
quantize at the prefill boundary around vLLM's chunked SSD kernel) against the torch reference built from
``ghost_vllm.mamba.int8_state``, under the Triton interpreter. Runs in a subprocess of its own (TRITON_INTERPRET=1, no
CUDA devices): the check loads vLLM's kernel files with stand-in ``vllm`` modules.

Time on this machine (2 cores): about 65 s for the 12 cases, 60 s for the wrong-scale-layout run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _run(tmp_path: Path, *args: str) -> tuple[int, dict, str]:
    out = tmp_path / "int8.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "ghost_vllm.kernels.int8_check", "--json", str(out), *args],
                          env=env, capture_output=True, text=True, timeout=600)
    assert out.is_file(), proc.stdout + proc.stderr
    return proc.returncode, json.loads(out.read_text()), proc.stdout + proc.stderr


def test_int8_kernels_match_reference(tmp_path):
    rc, report, log = _run(tmp_path)
    bad = [(c["label"], c["failed_checks"]) for c in report["cases"] if not c["ok"]]
    assert rc == 0 and not bad and report["failed"] == 0, (bad, log[-3000:])
    assert report["interpreter"] and not report["wrong_scale_layout"]
    cases = report["cases"]
    assert {c["state_size"] for c in cases} >= {120, 48, 72, 64, 40, 128}
    assert {c["n_groups"] for c in cases} == {1, 2}
    assert 64 in {c["head_dim"] for c in cases} and {c["num_heads"] for c in cases} == {8}
    prefill = [c for c in cases if c["prefill"]]
    assert {c["state_size"] for c in prefill} >= {120, 48, 72, 64, 40, 128}
    assert {c["n_groups"] for c in prefill} == {1, 2} and 64 in {c["head_dim"] for c in prefill}
    lim = report["limits"]
    for c in cases:
        e, null = c["errors"], c["null_block_id"]
        # a padded entry at the null block among shuffled, non-contiguous cache lines
        idx = c["decode_indices"]
        real = [i for i in idx if i != null]
        assert null in idx and len(set(real)) == len(real) and real != sorted(real)
        assert null in c["dequant_indices"]
        assert e["update.null_block_changed"] == 0 and e["update.other_lines_changed"] == 0
        assert e["dequant.null_rows_nonzero"] == 0 and e["dequant.rel"] == 0  # the same float32 product
        assert e["update.y_rel"] <= lim["y_rel"] and e["update.scale_rel"] <= lim["scale_rel"]
        assert e["update.quanta"] <= lim["quanta"] and e["update.code_max_diff"] <= 1
        assert e["update.code_diff_frac"] <= 1e-3
        if c["prefill"]:
            assert e["prefill.null_block_changed"] == 0 and e["prefill.other_lines_changed"] == 0
            assert e["prefill.y_rel"] <= lim["y_rel"] and e["prefill.scale_rel"] <= lim["scale_rel"]
            assert e["prefill.quanta"] <= lim["quanta"] and e["prefill.code_max_diff"] <= 1
            assert e["prefill.code_diff_frac"] <= 1e-3
        else:
            assert not any(k.startswith("prefill.") for k in e)


def test_int8_check_fails_with_wrong_scale_layout(tmp_path):
    rc, report, log = _run(tmp_path, "--wrong-scale-layout")
    cases = report["cases"]
    assert rc == 1 and report["wrong_scale_layout"], log[-3000:]
    assert len(cases) == 12 and report["failed"] == len(cases)
    for c in cases:  # every kernel's comparison fails, not only the bookkeeping
        assert not c["ok"]
        failed = set(c["failed_checks"])
        assert {"update.y_rel", "update.quanta", "update.scale_rel", "dequant.rel"} <= failed, c["label"]
        if c["prefill"]:
            assert {"prefill.y_rel", "prefill.quanta", "prefill.scale_rel"} <= failed, c["label"]
