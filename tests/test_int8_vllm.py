"""The int8 SSM-state cache in the real vLLM engine (CPU), one engine process for all of it: blocks in the same cache
memory for dense / adaptive-50 % at float32 / int8 state = the planner's, the int8 state's prompt log-probabilities
(one token per engine step, so every token's state goes through the cache as a decode step's does) = the reference
scan with the state stored as int8 after every token (``ghost_vllm.loadtest.state_formats``, the format's one
definition in ``ghost_vllm.mamba.int8_state``), greedy agreement with the float32-state engine, and the refusals:
prefix caching, and a checkpoint asking for int8 on vLLM without the plugin (the architecture is unknown there: it
fails, it never serves a float32 state)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ghost_vllm.cli import main as cli
from tests.test_vllm_engine import run_jobs

pytestmark = pytest.mark.vllm

MEMORY = 64 * 2**20
WINDOW = 96
DENSE_INT8 = {"architectures": ["GhostMamba2ForCausalLM"], "ghost_state_dtype": "int8"}


def _windows(model_dir: Path, n: int = 6) -> list[list[int]]:
    from ghost_vllm.checkpoint import load_tokenizer
    from ghost_vllm.reference import VALIDATION_TEXT

    tok = load_tokenizer(model_dir)
    ids = tok(Path(VALIDATION_TEXT).read_text(encoding="utf-8")[:60_000], add_special_tokens=False)["input_ids"]
    return [[tok.eos_token_id] + ids[i * WINDOW:(i + 1) * WINDOW] for i in range(n)]


def _simulated_nll(model_dir: Path, windows: list[list[int]], fmt: str) -> list[float]:
    from ghost_vllm.checkpoint import load_model
    from ghost_vllm.loadtest.state_formats import FORMATS, stored_state_mixers

    model = load_model(model_dir)
    x = torch.tensor(windows)
    with torch.no_grad(), stored_state_mixers(model, FORMATS[fmt]):
        logits = model(x, use_cache=False).logits.float()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                            reduction="none")
    return nll.view(len(windows), -1).sum(1).tolist()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ghost_vllm.reference import MODEL_DIR

    root = tmp_path_factory.mktemp("int8-vllm")
    int8 = root / "adaptive-int8"
    assert cli(["prune", "--model", "reference", "--calibration", "reference", "--nsamples", "32", "--seq-len", "128",
                "--multiple-of", "8", "--sparsity", "0.5", "--state-dtype", "int8",  # the default recipe + int8
                "--out", str(int8), "--no-progress"]) == 0
    windows = _windows(int8)
    prompts = [w[1:25] for w in _windows(int8, 12)]
    common = {"kv_cache_memory_bytes": MEMORY, "prompts": prompts, "max_tokens": 16}
    jobs = [
        {"model": str(MODEL_DIR), **common},  # dense, float32 state (stock vLLM class)
        {"model": str(MODEL_DIR), **common, "hf_overrides": DENSE_INT8},  # dense, int8 state at serve time
        {"model": str(int8), **common, "hf_overrides": {"ghost_state_dtype": None},  # adaptive, float32 state
         "score": windows, "long_prefill_token_threshold": 1},
        {"model": str(int8), **common, "score": windows, "long_prefill_token_threshold": 1},  # as the config says
        {"model": str(int8), "kv_cache_memory_bytes": MEMORY, "enable_prefix_caching": True},
    ]
    # in-process engine: every request is queued before the first step, so none is scheduled alone (vLLM then lifts
    # long_prefill_token_threshold) and every prompt token takes its own step
    results = run_jobs(jobs, root, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    unplugged = run_jobs([{"model": str(int8), "kv_cache_memory_bytes": MEMORY}], root, env={"VLLM_PLUGINS": ""})
    return {"root": root, "int8": int8, "dense": MODEL_DIR, "windows": windows, "results": results,
            "unplugged": unplugged[0]}


def _plan(capsys, model: Path, *extra: str) -> dict:
    capsys.readouterr()
    assert cli(["plan", str(model), "--cache-memory", str(MEMORY), "--dtype", "float32", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)[0]


def test_blocks_equal_the_planner_and_int8_adaptive_holds_6_5x_dense(setup, capsys):
    dense32, dense8, ad32, ad8 = (r["num_gpu_blocks"] for r in setup["results"][:4])
    for r in setup["results"][:4]:
        assert r["error"] is None, r["error"]
    plans = [_plan(capsys, setup["dense"]), _plan(capsys, setup["dense"], "--state-dtype", "int8"),
             _plan(capsys, setup["int8"], "--mamba-ssm-cache-dtype", "float32"), _plan(capsys, setup["int8"])]
    assert [p["num_blocks"] for p in plans] == [dense32, dense8, ad32, ad8]
    assert [p["ssm_dtype"] for p in plans] == ["float32", "int8", "float32", "int8"]
    # exact bytes: int8 element + one float32 scale per head and layer (8 heads × 64, 6 layers, conv float32)
    sizes = json.loads((setup["int8"] / "ghost.json").read_text())["state_sizes"]
    conv = sum(3 * (512 + 2 * n) * 4 for n in sizes)
    assert plans[3]["bytes_per_sequence"] == conv + sum(8 * 64 * n + 8 * 4 for n in sizes)
    assert plans[1]["bytes_per_sequence"] == 6 * (3 * (512 + 256) * 4 + 8 * 64 * 128 + 32)
    assert ad8 / dense32 >= 6.5 and dense8 > 3.5 * dense32 and ad8 > 3.3 * ad32


def test_int8_engine_scores_as_the_simulated_int8_state(setup):
    fp32, int8 = setup["results"][2]["nll"], setup["results"][3]["nll"]
    sim8 = _simulated_nll(setup["int8"], setup["windows"], "int8")
    sim32 = _simulated_nll(setup["int8"], setup["windows"], "float32")
    # float32 state through the engine = the scan; int8 = the scan with the state stored as int8 after every token
    assert max(abs(a - b) / b for a, b in zip(fp32, sim32)) <= 1e-5
    # int8 = the simulation up to rounding ties (the engine's and the simulation's float32 sums differ in order, so a
    # value near a rounding boundary can land on the other code and the difference propagates through the recurrence):
    # measured up to 2.2e-4 per window and 5e-5 over all windows on one machine, 1e-4 / 2e-5 on another — the goal
    # (issue 25, benchmarks/results/int8_state) is 0.1 % of perplexity
    off = [abs(a - b) / b for a, b in zip(int8, sim8)]
    total = abs(sum(int8) - sum(sim8)) / sum(sim8)
    assert max(off) <= 5e-4 and total <= 1.5e-4, (int8, sim8, fp32, sim32)
    # the int8 state is really in use: on average its scores are several times farther from float32's than from the
    # int8 simulation (measured 7×)
    to_fp32 = [abs(a - b) / b for a, b in zip(int8, fp32)]
    assert sum(to_fp32) / len(to_fp32) > 4 * sum(off) / len(off), (off, to_fp32)


def test_int8_greedy_agrees_with_the_float32_state(setup):
    dense32, dense8, ad32, ad8 = (r["tokens"] for r in setup["results"][:4])
    # int8 rounding can flip a near-tie, after which a sequence goes its own way; a wrong state gives gibberish from
    # the first decode step on (measured here: dense 0.85 of tokens / 10 of 12 sequences identical, adaptive 0.96 / 11 of 12)
    for a, b in ((dense32, dense8), (ad32, ad8)):
        same = sum(x == y for s, t in zip(a, b) for x, y in zip(s, t)) / sum(len(s) for s in a)
        assert same >= 0.6 and sum(s == t for s, t in zip(a, b)) >= len(a) // 3, (same, a, b)


def test_int8_refusals(setup):
    assert "prefix caching" in setup["results"][4]["error"]
    err = setup["unplugged"]["error"]
    assert err is not None and "GhostMamba2ForCausalLM" in err


def test_int8_refuses_a_vllm_it_was_not_written_for(monkeypatch):
    from types import SimpleNamespace

    import vllm

    from ghost_vllm.plugin.int8_mixer import INT8_VLLM_VERSIONS, check_int8_engine

    config = SimpleNamespace(cache_config=SimpleNamespace(mamba_cache_mode="none", use_replayssm=False),
                             speculative_config=None)
    assert vllm.__version__.split("+")[0] in INT8_VLLM_VERSIONS
    check_int8_engine(config)  # this vLLM: accepted
    monkeypatch.setattr(vllm, "__version__", "0.34.0")
    with pytest.raises(ValueError, match="written for vLLM 0.32.0 / 0.33.0, this is vLLM 0.34.0"):
        check_int8_engine(config)
    monkeypatch.setattr(vllm, "__version__", "0.33.0")
    config.cache_config.mamba_cache_mode = "align"
    with pytest.raises(ValueError, match="prefix caching"):
        check_int8_engine(config)
