"""Real vLLM (CPU build) with the plugin: greedy equality with transformers, capacity by byte ratio, corrupted
checkpoints rejected before allocation, other architectures unchanged. Engines run in subprocesses that report JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ghost_vllm.cli import main as cli

pytestmark = pytest.mark.vllm

HELPER = Path(__file__).parent / "helpers" / "vllm_jobs.py"
KV_BYTES = 64 * 2**20
SHORT = [5, 6, 7, 8]
LONG = [(17 * i + 3) % 300 + 2 for i in range(45)]  # 45 tokens > 5 chunks of 8


def run_jobs(jobs: list[dict], tmp: Path, env: dict | None = None, timeout: int = 900) -> list[dict]:
    spec, out = tmp / f"spec-{len(list(tmp.glob('spec-*')))}.json", tmp / f"out-{len(list(tmp.glob('out-*')))}.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    log = spec.with_suffix(".log")
    with open(log, "w") as fh:
        r = subprocess.run([sys.executable, str(HELPER), str(spec), str(out)], stdout=fh, stderr=subprocess.STDOUT,
                           timeout=timeout, env={**os.environ, **(env or {})})
    assert r.returncode == 0, log.read_text()[-3000:]
    return json.loads(out.read_text())["results"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from tests.helpers.tiny import save_tiny_checkpoint
    from ghost_vllm.reference import CALIBRATION_TEXT

    root = tmp_path_factory.mktemp("vllm-models")
    out = {}
    for g in (1, 2):
        dense = root / f"dense-g{g}"
        save_tiny_checkpoint(dense, seed=10 + g, n_groups=g)
        pruned = root / f"ghost50-g{g}"
        assert cli(["prune", "--model", str(dense), "--calibration", str(CALIBRATION_TEXT), "--nsamples", "8",
                    "--seq-len", "32", "--out", str(pruned), "--no-progress", "--allocation", "uniform"]) == 0
        out[f"dense-g{g}"], out[f"ghost50-g{g}"] = dense, pruned
    # corrupted copies of the G=1 checkpoint
    bad_n = root / "bad-n"
    shutil.copytree(out["ghost50-g1"], bad_n)
    for name in ("config.json", "ghost.json"):  # both say N'=4, the weights hold 8
        d = json.loads((bad_n / name).read_text())
        d["state_size"] = 4
        (bad_n / name).write_text(json.dumps(d))
    bad_ghost = root / "bad-ghost-json"
    shutil.copytree(out["ghost50-g1"], bad_ghost)
    g = json.loads((bad_ghost / "ghost.json").read_text())
    g["state_size"] = 4
    (bad_ghost / "ghost.json").write_text(json.dumps(g))
    missing = root / "missing-ghost-json"
    shutil.copytree(out["ghost50-g1"], missing)
    (missing / "ghost.json").unlink()
    truncated = root / "truncated"
    shutil.copytree(out["ghost50-g1"], truncated)
    st = truncated / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    out.update({"bad-n": bad_n, "bad-ghost-json": bad_ghost, "missing-ghost-json": missing, "truncated": truncated})
    return out


@pytest.fixture(scope="module")
def engine_results(models, tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("vllm-jobs")
    names = ["ghost50-g1", "ghost50-g2", "dense-g1", "bad-n", "bad-ghost-json", "missing-ghost-json", "truncated"]
    jobs = [{"model": str(models[n]), "prompts": [SHORT, LONG], "max_tokens": 10, "kv_cache_memory_bytes": KV_BYTES}
            for n in names]
    results = dict(zip(names, run_jobs(jobs, tmp)))
    # the stock architecture once more with every plugin disabled: must be identical
    results["dense-g1-no-plugins"] = run_jobs([{**jobs[2]}], tmp, env={"VLLM_PLUGINS": "none-at-all"})[0]
    return results


def transformers_greedy(model_dir: Path, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding with full re-computation each step (no cache): an independent path to the same tokens."""
    from transformers import Mamba2ForCausalLM

    from ghost_vllm.mamba.norm import patch_group_norm

    model = Mamba2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    patch_group_norm(model)  # vLLM and mamba_ssm normalise per group
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("name", ["ghost50-g1", "ghost50-g2"])
def test_vllm_greedy_equals_transformers(engine_results, models, name):
    r = engine_results[name]
    assert r["error"] is None, r["error"]
    for prompt, got in zip([SHORT, LONG], r["tokens"]):
        assert got == transformers_greedy(models[name], prompt, 10)


def test_capacity_ratio_equals_byte_ratio(engine_results, models):
    from ghost_vllm.inspection import inspect_checkpoint

    dense, pruned = engine_results["dense-g1"], engine_results["ghost50-g1"]
    info = inspect_checkpoint(models["ghost50-g1"])
    byte_ratio = info["bytes_per_sequence_original"] / info["bytes_per_sequence"]
    slot_ratio = pruned["num_gpu_blocks"] / dense["num_gpu_blocks"]
    assert slot_ratio == pytest.approx(byte_ratio, rel=0.01)
    # exact: vLLM gives memory // bytes-per-sequence blocks
    assert pruned["num_gpu_blocks"] == KV_BYTES // info["bytes_per_sequence"]
    assert dense["num_gpu_blocks"] == KV_BYTES // info["bytes_per_sequence_original"]


@pytest.mark.parametrize(
    "name, message",
    [
        ("bad-n", "config.json implies"),
        ("bad-ghost-json", "ghost.json says state_size 4 but config.json says 8"),
        ("missing-ghost-json", "no ghost.json"),
        ("truncated", "truncated or padded safetensors file"),
    ],
)
def test_corrupted_checkpoints_fail_before_allocation(engine_results, name, message):
    r = engine_results[name]
    assert r["num_gpu_blocks"] is None and r["tokens"] is None
    assert r["error"] is not None and message in r["error"], r["error"]
    assert "CheckpointError" in r["error"] or "ModelError" in r["error"]


def test_stock_architecture_is_unchanged_by_the_plugin(engine_results):
    with_plugin, without = engine_results["dense-g1"], engine_results["dense-g1-no-plugins"]
    assert with_plugin["error"] is None and without["error"] is None
    assert with_plugin["tokens"] == without["tokens"]
    assert with_plugin["num_gpu_blocks"] == without["num_gpu_blocks"]
