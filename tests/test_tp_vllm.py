"""Tensor parallelism in the real vLLM engine (CPU, 2 workers): a uniform ghost checkpoint (n_groups 1, through
`ghost-vllm serve --tensor-parallel-size 2`) and a per-layer one (n_groups 2, with the int8 SSM state, through plain
`vllm serve` with the thread binding the README gives) give TP 1's greedy tokens, allocate exactly the blocks `ghost-vllm plan
--tensor-parallel-size 2` predicts, and export ghost: metrics priced per rank; so does a balanced-truncation checkpoint
(n_groups 2, per-layer ranks: its projections sharded by group). One engine start per checkpoint and TP size (6 in
all)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from ghost_vllm.loadtest.server import VLLMServer
from ghost_vllm.cli import main as cli
from tests.test_vllm_engine import LONG, SHORT, run_jobs
from tests.test_vllm_server import _samples

pytestmark = pytest.mark.vllm

MEMORY = 3_000_000  # per rank
TOKENS = 10


def _plan(model, tp: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "ghost_vllm.cli", "plan", str(model), "--cache-memory", str(MEMORY),
                          "--dtype", "float32", "--tensor-parallel-size", str(tp), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


def _served(model, name: str, tmp, launcher: str, env: dict | None = None) -> dict:
    """Greedy tokens of both prompts and /metrics from a TP-2 server."""
    import openai

    args = ["--dtype", "float32", "--max-model-len", "256", "--enforce-eager", "--tensor-parallel-size", "2",
            "--kv-cache-memory-bytes", str(MEMORY), "--served-model-name", name, "--max-num-seqs", "8"]
    server = VLLMServer(str(model), args, log_path=tmp / f"{name}.log", launcher=launcher, env=env)
    with server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", timeout=120)
        tokens = []
        for prompt in (SHORT, LONG):
            r = client.completions.create(model=name, prompt=prompt, max_tokens=TOKENS, temperature=0,
                                          extra_body={"return_token_ids": True, "ignore_eos": True})
            tokens.append(list(r.choices[0].token_ids))
        metrics = server.metrics()
    log = (tmp / f"{name}.log").read_text()
    return {"tokens": tokens, "metrics": metrics, "log": log}


@pytest.fixture(scope="module")
def tp(tmp_path_factory):
    from tests.helpers.tiny import save_tiny_checkpoint
    from ghost_vllm.reference import CALIBRATION_TEXT

    root = tmp_path_factory.mktemp("tp")
    common = ["--calibration", str(CALIBRATION_TEXT), "--nsamples", "8", "--seq-len", "32", "--no-progress"]
    save_tiny_checkpoint(root / "dense-g1", seed=31, n_groups=1)
    save_tiny_checkpoint(root / "dense-g2", seed=32, n_groups=2, num_hidden_layers=4)
    models = {"uniform-g1": root / "uniform-g1", "layers-g2": root / "layers-g2", "balanced-g2": root / "balanced-g2"}
    assert cli(["prune", "--model", str(root / "dense-g1"), *common, "--sparsity", "0.5", "--allocation", "uniform",
                "--out", str(models["uniform-g1"])]) == 0
    assert cli(["prune", "--model", str(root / "dense-g2"), *common, "--multiple-of", "4", "--state-sizes",
                "4,16,8,12", "--state-dtype", "int8", "--out", str(models["layers-g2"])]) == 0  # + the int8 state
    # balanced truncation, Hankel ranks, n_groups 2: each rank holds one group's projections (sharded by group)
    assert cli(["prune", "--model", str(root / "dense-g2"), *common, "--method", "balanced", "--sparsity", "0.5",
                "--multiple-of", "4", "--out", str(models["balanced-g2"])]) == 0
    jobs = [{"model": str(m), "prompts": [SHORT, LONG], "max_tokens": TOKENS, "kv_cache_memory_bytes": MEMORY}
            for m in models.values()]
    tp1 = dict(zip(models, run_jobs(jobs, root)))
    tp2 = {"uniform-g1": _served(models["uniform-g1"], "uniform-g1", root, "ghost-vllm"),
           "layers-g2": _served(models["layers-g2"], "layers-g2", root, "vllm",
                                env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"}),
           "balanced-g2": _served(models["balanced-g2"], "balanced-g2", root, "ghost-vllm")}
    return models, tp1, tp2


@pytest.mark.parametrize("name", ["uniform-g1", "layers-g2", "balanced-g2"])
def test_tp2_greedy_tokens_equal_tp1(tp, name):
    _, tp1, tp2 = tp
    assert tp1[name]["error"] is None, tp1[name]["error"]
    assert len(tp1[name]["tokens"][1]) == TOKENS
    assert tp2[name]["tokens"] == tp1[name]["tokens"]


@pytest.mark.parametrize("name", ["uniform-g1", "layers-g2", "balanced-g2"])
def test_tp2_blocks_equal_the_planner(tp, name):
    models, tp1, tp2 = tp
    text = tp2[name]["metrics"]
    blocks = int(re.search(r'vllm:cache_config_info\{[^}]*num_gpu_blocks="(\d+)"', text).group(1))
    plan2, plan1 = _plan(models[name], 2), _plan(models[name], 1)
    assert blocks == plan2["num_blocks"]
    assert tp1[name]["num_gpu_blocks"] == plan1["num_blocks"]
    # a rank holds about half of each sequence's state: TP 2 fits more sequences per rank's memory
    assert plan2["bytes_per_sequence"] < plan1["bytes_per_sequence"]
    assert blocks > tp1[name]["num_gpu_blocks"]


@pytest.mark.parametrize("name", ["uniform-g1", "layers-g2", "balanced-g2"])
def test_tp2_ghost_metrics_are_priced_per_rank(tp, name):
    models, _, tp2 = tp
    text = tp2[name]["metrics"]
    label = f'model_name="{name}"'
    plan2 = _plan(models[name], 2)
    assert _samples(text, "ghost:tensor_parallel_size")[f"{{{label}}}"] == 2
    assert _samples(text, "ghost:state_bytes_per_sequence")[f'{{{label},variant="pruned"}}'] == plan2[
        "bytes_per_sequence"]
    blocks = int(re.search(r'vllm:cache_config_info\{[^}]*num_gpu_blocks="(\d+)"', text).group(1))
    assert _samples(text, "ghost:state_slots")[f"{{{label}}}"] == blocks - 1
    dense_rank = _samples(text, "ghost:state_bytes_per_sequence")[f'{{{label},variant="original"}}']
    assert _samples(text, "ghost:dense_equivalent_state_slots")[f"{{{label}}}"] == MEMORY // dense_rank - 1
    assert _samples(text, "ghost:generation_tokens_total")[f"{{{label}}}"] == 2 * TOKENS


def test_ghost_serve_binds_one_core_group_per_cpu_worker(tp):
    _, _, tp2 = tp
    assert "VLLM_CPU_OMP_THREADS_BIND=0|1" in tp2["uniform-g1"]["log"]
