"""One figure for a hybrid, whoever computes it: for the bundled Nemotron-H-shaped hybrid pruned to 50 % and served
by a real vLLM server, `ghost-vllm plan`'s blocks and concurrent sequences equal the engine's block count and the
`ghost:state_slots` metric; `ghost:dense_equivalent_state_slots` equals plan's figure for the dense model in the same
memory; and `inspect`, `plan` and `/metrics` agree on the Mamba state bytes per sequence (SSM state kept in float32 as
vLLM does for Nemotron-H)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from ghost_vllm.cli import main as cli
from ghost_vllm.loadtest.server import VLLMServer
from tests.test_vllm_server import _samples

pytestmark = pytest.mark.vllm

MEMORY = 24_000_000
CONTEXT = 256


def _plan(model) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "ghost_vllm.cli", "plan", str(model), "--cache-memory", str(MEMORY),
                        "--dtype", "float32", "--platform", "cpu", "--no-prefix-caching", "--max-model-len",
                        str(CONTEXT), "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_inspect_plan_metrics_and_engine_agree_for_a_pruned_hybrid(tmp_path):
    from ghost_vllm.inspection import inspect_checkpoint

    pruned = tmp_path / "hybrid-ghost50"
    assert cli(["prune", "--model", "hybrid", "--sparsity", "0.5", "--nsamples", "8", "--seq-len", "64", "--out",
                str(pruned), "--no-progress"]) == 0
    (plan_pruned,) = _plan(pruned)
    plan_dense = next(r for r in _plan("hybrid") if r["sparsity"] == 0)
    info = inspect_checkpoint(pruned, dtype="float32")
    server = VLLMServer(str(pruned), ["--dtype", "float32", "--max-model-len", str(CONTEXT), "--enforce-eager",
                                      "--kv-cache-memory-bytes", str(MEMORY), "--no-enable-prefix-caching",
                                      "--served-model-name", "hy"], log_path=tmp_path / "server.log")
    with server:
        text = server.metrics()
    blocks = int(re.search(r'vllm:cache_config_info\{[^}]*num_gpu_blocks="(\d+)"', text).group(1))
    assert blocks == plan_pruned["num_blocks"]
    label = '{model_name="hy"}'
    assert _samples(text, "ghost:state_slots")[label] == plan_pruned["concurrent_sequences"] == (
        (blocks - 1) // plan_pruned["blocks_per_sequence"])
    assert _samples(text, "ghost:dense_equivalent_state_slots")[label] == plan_dense["concurrent_sequences"]
    assert plan_pruned["concurrent_sequences"] > plan_dense["concurrent_sequences"]
    mamba_bytes = plan_pruned["conv_bytes_per_sequence"] + plan_pruned["ssm_bytes_per_sequence"]
    per_seq = _samples(text, "ghost:state_bytes_per_sequence")
    assert per_seq['{model_name="hy",variant="pruned"}'] == info["bytes_per_sequence"] == mamba_bytes
    assert info["ssm_dtype"] == "float32"
