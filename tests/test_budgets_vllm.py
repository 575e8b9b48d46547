"""Per-layer state budgets in the real vLLM engine (CPU): greedy tokens of a non-uniform checkpoint equal the dense
model's with the removed channels zeroed, the engine allocates exactly Σ_l bytes_l per sequence, and the vLLM patch
leaves every other model exactly as it was. Engines run in subprocesses that report JSON (tests/helpers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ghost_vllm.cli import main as cli
from tests.test_budgets import _zeroed_dense
from tests.test_vllm_engine import LONG, SHORT, run_jobs

pytestmark = pytest.mark.vllm

MEMORIES = (3_000_000, 7_777_777)
REF_MEMORY = 26_100_000


def _greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def _tiny_llama(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers.tiny import tiny_tokenizer

    tok = tiny_tokenizer(320)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.helpers.tiny import save_tiny_checkpoint
    from ghost_vllm.reference import CALIBRATION_TEXT

    root = tmp_path_factory.mktemp("budgets-vllm")
    dense = root / "dense"
    save_tiny_checkpoint(dense, seed=21, n_groups=2, num_hidden_layers=4)
    models = {"dense": dense}
    common = ["--calibration", str(CALIBRATION_TEXT), "--nsamples", "8", "--seq-len", "32", "--no-progress"]
    models["layers"] = root / "layers"
    assert cli(["prune", "--model", str(dense), *common, "--multiple-of", "4", "--state-sizes", "4,16,8,12",
                "--no-refit", "--out", str(models["layers"])]) == 0  # truncation only: = the zeroed dense model
    models["uniform"] = root / "uniform"
    assert cli(["prune", "--model", str(dense), *common, "--sparsity", "0.5", "--allocation", "uniform", "--no-refit",
                "--out", str(models["uniform"])]) == 0
    models["ref-adaptive"] = root / "ref-adaptive"
    assert cli(["prune", "--model", "reference", "--calibration", "reference", "--nsamples", "32", "--seq-len", "128",
                "--multiple-of", "8", "--sparsity", "0.5",  # the default recipe: adaptive + refit
                "--out", str(models["ref-adaptive"]), "--no-progress"]) == 0
    models["llama"] = _tiny_llama(root / "llama")

    tmp = tmp_path_factory.mktemp("budgets-jobs")
    prompts = [SHORT, LONG]
    jobs = [{"model": str(models["layers"]), "prompts": prompts, "max_tokens": 10, "kv_cache_memory_bytes": m}
            for m in MEMORIES]
    jobs.append({"model": str(models["ref-adaptive"]), "prompts": prompts, "max_tokens": 10,
                 "kv_cache_memory_bytes": REF_MEMORY})
    results = {"layers": run_jobs(jobs, tmp)}
    # inertness: the patch installed in the engine's own process vs not at all, for models that do not need it
    inert = []
    for name in ("uniform", "llama"):
        base = {"model": str(models[name]), "prompts": prompts, "max_tokens": 10, "kv_cache_memory_bytes": MEMORIES[1]}
        inert += [base, {**base, "apply_patches": ["ssu-backend-uniform-type"]}]
    results["inert"] = run_jobs(inert, tmp, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    return models, results


def test_non_uniform_greedy_equals_the_zeroed_dense_model(setup):
    models, results = setup
    ghost = json.loads((models["layers"] / "ghost.json").read_text())
    dense0 = _zeroed_dense(models["dense"], ghost)
    expected = [_greedy(dense0, p, 10) for p in (SHORT, LONG)]
    for r in results["layers"][:2]:
        assert r["error"] is None, r["error"]
        assert r["tokens"] == expected


def test_engine_allocates_exactly_the_per_layer_bytes(setup):
    from ghost_vllm.inspection import inspect_checkpoint

    models, results = setup
    info = inspect_checkpoint(models["layers"])
    per_seq = sum(info["bytes_per_layer"])
    padded = len(info["bytes_per_layer"]) * max(info["bytes_per_layer"])  # stock vLLM: every page = the largest
    assert per_seq < padded
    for memory, r in zip(MEMORIES, results["layers"]):
        assert r["num_gpu_blocks"] == memory // per_seq  # slots = blocks − 1 (vLLM's null block)
        assert r["num_gpu_blocks"] > memory // padded


def test_adaptive_reference_checkpoint_is_served(setup):
    from ghost_vllm.checkpoint import load_model
    from ghost_vllm.inspection import inspect_checkpoint

    models, results = setup
    r = results["layers"][2]
    assert r["error"] is None, r["error"]
    ghost = json.loads((models["ref-adaptive"] / "ghost.json").read_text())
    assert ghost["allocation"] == "adaptive" and ghost["refit"]["target"] == "global"  # the default recipe
    info = inspect_checkpoint(models["ref-adaptive"])
    assert r["num_gpu_blocks"] == REF_MEMORY // info["bytes_per_sequence"]
    model = load_model(models["ref-adaptive"])
    assert r["tokens"] == [_greedy(model, p, 10) for p in (SHORT, LONG)]


@pytest.mark.parametrize("i, name", [(0, "uniform"), (2, "llama")])
def test_patch_is_inert_for_models_that_do_not_need_it(setup, i, name):
    _, results = setup
    without, with_patch = results["inert"][i], results["inert"][i + 1]
    assert without["error"] is None and with_patch["error"] is None, (without["error"], with_patch["error"])
    assert without["tokens"] == with_patch["tokens"]
    assert without["num_gpu_blocks"] == with_patch["num_gpu_blocks"]
