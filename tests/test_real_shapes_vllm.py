"""Real shapes through real vLLM (CPU build): a mamba2-130m-shaped checkpoint (mamba_ssm layout, random weights)
pruned to 50 % by the CLI, and a Codestral-7B-shaped one (n_groups 8) scaled down, both served by the plugin —
greedy tokens equal transformers', and the engine's cache blocks are exactly memory // the bytes `inspect` reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from ghost_vllm.cli import main as cli
from tests.test_vllm_engine import run_jobs, transformers_greedy

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]
NEOX = ROOT.parent / "shared" / "data" / "tokenizers" / "gpt-neox-20b.json"
KV_BYTES = 256 * 2**20
PROMPT = [510, 5347, 273, 6181, 310, 253, 2846]  # GPT-NeoX ids, all < 8000 so they fit every vocab here
STEPS = 6


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from ghost_vllm.mamba.mamba_ssm_format import (
        codestral_like_config,
        convert_mamba_ssm_dir,
        mamba_ssm_config,
        save_random_mamba_ssm_checkpoint,
    )
    from ghost_vllm.reference import CALIBRATION_TEXT, MODEL_DIR

    root = tmp_path_factory.mktemp("real-shapes")
    ssm = save_random_mamba_ssm_checkpoint(root / "mamba2-130m", mamba_ssm_config("mamba2-130m"), seed=1)
    out = {"dense-130m": convert_mamba_ssm_dir(ssm, root / "mamba2-130m-hf", tokenizer=str(NEOX))}
    calib = ["--calibration", str(CALIBRATION_TEXT), "--nsamples", "8", "--seq-len", "64", "--no-progress",
             "--allocation", "uniform"]  # plain transformers (from_pretrained) loads uniform checkpoints
    assert cli(["prune", "--model", str(ssm), "--tokenizer", str(NEOX), "--out", str(root / "ghost50-130m"),
                *calib]) == 0
    out["ghost50-130m"] = root / "ghost50-130m"
    dense = convert_mamba_ssm_dir(save_random_mamba_ssm_checkpoint(root / "codestral", codestral_like_config(), seed=2),
                                  root / "codestral-hf", tokenizer=str(MODEL_DIR / "tokenizer.json"))
    assert cli(["prune", "--model", str(dense), "--out", str(root / "ghost50-codestral"), *calib]) == 0
    out["ghost50-codestral"] = root / "ghost50-codestral"
    return out


@pytest.fixture(scope="module")
def served(models, tmp_path_factory) -> dict[str, dict]:
    names = ["ghost50-130m", "dense-130m", "ghost50-codestral"]
    jobs = [{"model": str(models[n]), "prompts": [PROMPT], "max_tokens": STEPS, "kv_cache_memory_bytes": KV_BYTES,
             "max_num_seqs": 8} for n in names]
    return dict(zip(names, run_jobs(jobs, tmp_path_factory.mktemp("real-shapes-jobs"), timeout=1200)))


@pytest.mark.parametrize("name", ["ghost50-130m", "ghost50-codestral"])
def test_pruned_real_shape_serves_and_matches_transformers(served, models, name):
    r = served[name]
    assert r["error"] is None, r["error"]
    assert len(r["tokens"][0]) == STEPS
    assert r["tokens"][0] == transformers_greedy(models[name], PROMPT, STEPS)


def test_130m_cache_blocks_follow_the_inspected_bytes(served, models):
    import math

    from vllm.model_executor.layers.mamba.mamba_utils import MambaStateShapeCalculator

    from ghost_vllm.inspection import inspect_checkpoint

    info = inspect_checkpoint(models["ghost50-130m"])
    assert (info["layers"], info["state_size"], info["state_size_original"]) == (24, 64, 128)
    for n, key in ((64, "bytes_per_sequence"), (128, "bytes_per_sequence_original")):
        conv, ssm = MambaStateShapeCalculator.mamba2_state_shape(
            tp_world_size=1, intermediate_size=1536, n_groups=1, num_heads=24, head_dim=64, state_size=n,
            conv_kernel=4)
        assert info[key] == 24 * 4 * (math.prod(conv) + math.prod(ssm))  # float32 checkpoint: 4 B per element
    assert served["ghost50-130m"]["num_gpu_blocks"] == KV_BYTES // info["bytes_per_sequence"]
    assert served["dense-130m"]["num_gpu_blocks"] == KV_BYTES // info["bytes_per_sequence_original"]
    assert served["ghost50-130m"]["num_gpu_blocks"] > 1.9 * served["dense-130m"]["num_gpu_blocks"]
