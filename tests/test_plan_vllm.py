"""`ghost-vllm plan --cache-memory M` predicts the block count real vLLM engines on CPU report for the same
kv_cache_memory_bytes — exactly, at several sizes per model, including the smallest memory that starts (2 blocks)
and one byte less (the planner refuses it; the engine fails to start). Engines run in one subprocess each batch
(VLLM_ENABLE_V1_MULTIPROCESSING=0: ~3 s per engine after the first)."""

from __future__ import annotations

import json

import pytest

from ghost_vllm.cli import main as cli
from tests.test_vllm_engine import run_jobs

pytestmark = pytest.mark.vllm


def _plan(capsys, model: str, memory: int, *extra: str) -> tuple[int, object]:
    capsys.readouterr()
    rc = cli(["plan", model, "--cache-memory", str(memory), "--dtype", "float32", "--json", *extra])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if rc == 0 else out.err)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.helpers.tiny import save_tiny_checkpoint
    from ghost_vllm.reference import CALIBRATION_TEXT, MODEL_DIR

    root = tmp_path_factory.mktemp("plan-vllm")
    models = {"reference": str(MODEL_DIR)}
    tiny = root / "tiny-g2"
    save_tiny_checkpoint(tiny, seed=31, n_groups=2, num_hidden_layers=4)
    models["tiny-g2"] = str(tiny)
    common = ["--calibration", str(CALIBRATION_TEXT), "--nsamples", "8", "--seq-len", "32", "--no-progress"]
    assert cli(["prune", "--model", str(tiny), *common, "--multiple-of", "4", "--state-sizes", "4,16,8,12",
                "--out", str(root / "layers")]) == 0
    models["layers"] = str(root / "layers")
    assert cli(["prune", "--model", "reference", "--calibration", "reference", "--nsamples", "16", "--seq-len", "64",
                "--sparsity", "0.5", "--out", str(root / "ref-ghost50"), "--no-progress"]) == 0
    models["ref-ghost50"] = str(root / "ref-ghost50")
    return models


def _block_bytes(model: str) -> int:
    from ghost_vllm.mamba.layout import InProjLayout
    from ghost_vllm.planner.arith import block_math
    from ghost_vllm.planner.models import resolve_plan_model

    m = resolve_plan_model(model)
    return block_math(InProjLayout.from_config(m.config), m.state_sizes, "float32", "float32").bytes_per_block


def test_plan_predicts_the_engines_block_count(setup, capsys, tmp_path):
    cases = []  # (name, memory, extra plan flags, job overrides)
    for name, model in setup.items():
        b = _block_bytes(model)
        for memory in (2 * b - 1, 2 * b, 3 * b + b // 2, 7_777_777 if b < 1_000_000 else 26_100_000):
            cases.append((name, memory, (), {}))
    cases.append(("reference", 26_100_000, ("--mamba-ssm-cache-dtype", "bfloat16"), {"mamba_ssm_cache_dtype": "bfloat16"}))
    jobs = [{"model": setup[name], "kv_cache_memory_bytes": memory, **over} for name, memory, _, over in cases]
    results = run_jobs(jobs, tmp_path, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    checked = 0
    for (name, memory, flags, _), engine in zip(cases, results):
        dense_only = ("--sparsity", "0") if name in ("reference", "tiny-g2") else ()
        rc, plan = _plan(capsys, setup[name], memory, *flags, *dense_only)
        if rc != 0:  # the planner says no sequence fits: the engine must refuse to start too
            assert rc == 2 and "holds no sequence" in plan, plan
            assert engine["num_gpu_blocks"] is None and "KV cache" in (engine["error"] or ""), (name, memory, engine)
            continue
        assert engine["error"] is None, (name, memory, engine["error"])
        (row,) = plan
        assert row["num_blocks"] == engine["num_gpu_blocks"], (name, memory, row, engine)
        assert row["max_num_seqs"] == row["num_blocks"] and row["concurrent_sequences"] == row["num_blocks"] - 1
        checked += 1
    assert checked == 3 * len(setup) + 1  # three sizes that start per model, plus the bfloat16 SSM state
