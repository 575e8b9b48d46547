"""A projected-state ("balanced") checkpoint in the real vLLM engine (CPU), one engine process for all of it. The
checkpoints are built by hand from the bundled reference model (6 layers, 8 heads × 64, n_groups 1, N 128):

* r = N with a random well-conditioned T and S = T⁻¹ per layer: the dense model's engine log-probabilities and greedy
  tokens (T·h is only a change of basis);
* per-layer ranks with T = Qᵀ, S = Q (orthonormal columns): an independent pure-torch computation of the projected
  model (``ghost_vllm.mamba.reference``'s conv, scan and norm around a hand-written B/C projection), through the
  engine's prefill and, one token per step, its decode path; blocks = memory // Σ_l bytes (conv at N, SSM at r_l);
* the same with the int8 state: the projected model's scan with its r_l-wide state stored as int8 after every token
  (``ghost_vllm.loadtest.state_formats``, on mixers made projected by ``ghost_vllm.mamba.projection``);
* tensor parallel 2 (the one group replicated, with its projections): TP 1's greedy tokens;
* refusals: a mis-shaped or missing projection tensor, and the checkpoint on vLLM without the plugin.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ghost_vllm.ghost_format import PROJ_IN, PROJ_OUT, STATE_RANKS_KEY, write_ghost_json
from ghost_vllm.mamba.layout import InProjLayout
from ghost_vllm.mamba.reference import gated_group_rmsnorm, mixer_ssm_inputs, ssm_scan
from tests.test_vllm_engine import run_jobs

pytestmark = pytest.mark.vllm

MEMORY = 16 * 2**20
WINDOW = 64
RANKS = [64, 32, 48, 32, 16, 64]
L, N, G, H, P, K, I = 6, 128, 1, 8, 64, 4, 512  # the reference model's shapes

Projections = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (T [G, r, N], S [G, N, r])


def _full_rank(seed: int) -> Projections:
    """T = U·diag(s)·Vᵀ with singular values in [0.5, 2] (condition ≤ 4), S = T⁻¹."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(L):
        u, _r = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
        v, _r = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
        s = 0.5 * 4 ** torch.rand(N, generator=g, dtype=torch.float64)
        T = u @ torch.diag(s) @ v.T
        out.append((T[None].float(), torch.linalg.inv(T)[None].float()))
    return out


def _orthonormal(ranks: list[int], seed: int) -> Projections:
    """T = Qᵀ, S = Q with Q [N, r] the orthonormal columns of a seeded QR."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for r in ranks:
        q, _r = torch.linalg.qr(torch.randn(N, r, generator=g, dtype=torch.float64))
        out.append((q.T[None].float(), q[None].float()))
    return out


def _checkpoint(dst: Path, projections: Projections, drop: str | None = None) -> Path:
    """The reference model with ``ghost_state_ranks`` and the two tensors per layer (``drop``: leave that one out)."""
    from safetensors.torch import load_file, save_file

    from ghost_vllm.reference import MODEL_DIR

    shutil.copytree(MODEL_DIR, dst)
    ranks = [int(t.shape[1]) for t, _s in projections]
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update({"architectures": ["GhostMamba2ForCausalLM"], STATE_RANKS_KEY: ranks})
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    tensors = load_file(dst / "model.safetensors")
    for i, (t, s) in enumerate(projections):
        tensors[f"backbone.layers.{i}.mixer.{PROJ_IN}"] = t.contiguous()
        tensors[f"backbone.layers.{i}.mixer.{PROJ_OUT}"] = s.contiguous()
    tensors.pop(drop, None)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    write_ghost_json(dst, {"state_size": N, "state_size_original": N, "state_sizes": [N] * L, "method": "balanced", "state_ranks": ranks,
                           "layers": [{"kept": [list(range(N))]} for _ in range(L)]})
    return dst


def _logprobs(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p of every token after the first ``[n, T-1]`` from ``logits [n, T, vocab]`` of ``x [n, T]``."""
    return logits[:, :-1].float().log_softmax(-1).gather(-1, x[:, 1:, None])[..., 0]


def _windows(n: int) -> list[list[int]]:
    from ghost_vllm.checkpoint import load_tokenizer
    from ghost_vllm.reference import MODEL_DIR, VALIDATION_TEXT

    tok = load_tokenizer(MODEL_DIR)
    ids = tok(Path(VALIDATION_TEXT).read_text(encoding="utf-8")[:40_000], add_special_tokens=False)["input_ids"]
    return [[tok.eos_token_id] + ids[i * WINDOW:(i + 1) * WINDOW] for i in range(n)]


def _oracle_logprobs(windows: list[list[int]], projections: Projections | None) -> torch.Tensor:
    """log p of every window token after the first ``[n, WINDOW]``: the dense reference model's embeddings, norms
    and lm_head around mixers computed with ``ghost_vllm.mamba.reference`` and B' = T·B, C' = Sᵀ·C written here."""
    from ghost_vllm.checkpoint import load_model
    from ghost_vllm.reference import MODEL_DIR

    model = load_model(MODEL_DIR).float().eval()
    layout = InProjLayout.from_config(model.config)
    x = torch.tensor(windows)
    b, T = x.shape
    with torch.no_grad():
        h = model.backbone.embeddings(x)
        for i, block in enumerate(model.backbone.layers):
            mixer = block.mixer
            s = mixer_ssm_inputs(mixer, layout, block.norm(h))  # B, C [b, T, G, N]
            B, C = s.B, s.C
            if projections is not None:
                Tm, Sm = projections[i]
                B = torch.einsum("grn,btgn->btgr", Tm, B)
                C = torch.einsum("gnr,btgn->btgr", Sm, C)
            y, _h = ssm_scan(s.x, s.dt, s.A, B, C, s.D)  # [b, T, H, P]
            y = gated_group_rmsnorm(y.reshape(b, T, -1), s.z, mixer.norm.weight, mixer.norm.variance_epsilon,
                                    layout.n_groups)
            h = h + F.linear(y, mixer.out_proj.weight)
        return _logprobs(model.lm_head(model.backbone.norm_f(h)), x)


def _simulated_int8_logprobs(windows: list[list[int]], projections: Projections) -> torch.Tensor:
    """The projected model with its state stored as int8 after every token (the format's one definition)."""
    from ghost_vllm.checkpoint import load_model
    from ghost_vllm.loadtest.state_formats import FORMATS, stored_state_mixers
    from ghost_vllm.mamba.projection import attach_projection
    from ghost_vllm.reference import MODEL_DIR

    model = load_model(MODEL_DIR).float().eval()
    for layer, (T, S) in zip(model.backbone.layers, projections):
        attach_projection(layer.mixer, T, S)
    x = torch.tensor(windows)
    with torch.no_grad(), stored_state_mixers(model, FORMATS["int8"]):
        return _logprobs(model(x, use_cache=False).logits, x)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ghost_vllm.reference import MODEL_DIR

    root = tmp_path_factory.mktemp("balanced-vllm")
    full = _checkpoint(root / "full-rank", _full_rank(1))
    ortho = _orthonormal(RANKS, 2)
    ranked = _checkpoint(root / "per-layer", ortho)
    bad = _orthonormal(RANKS, 2)
    bad[2] = (torch.zeros(G, RANKS[2], N + 1), bad[2][1])
    misshaped = _checkpoint(root / "misshaped", bad)
    missing = _checkpoint(root / "missing", ortho, drop=f"backbone.layers.3.mixer.{PROJ_OUT}")
    windows = _windows(4)
    prompts = [w[1:21] for w in _windows(8)]
    common = {"kv_cache_memory_bytes": MEMORY, "prompts": prompts, "max_tokens": 12, "score": windows}
    stepwise = {"long_prefill_token_threshold": 1}  # every prompt token one engine step: the decode path
    jobs = [
        {"model": str(MODEL_DIR), **common},  # dense (stock vLLM class)
        {"model": str(full), **common},
        {"model": str(ranked), **common},  # prefill path
        {"model": str(ranked), **common, **stepwise},  # decode path
        {"model": str(ranked), **common, **stepwise, "hf_overrides": {"ghost_state_dtype": "int8"}},
        {"model": str(misshaped), "kv_cache_memory_bytes": MEMORY},
        {"model": str(missing), "kv_cache_memory_bytes": MEMORY},
    ]
    results = run_jobs(jobs, root, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    tp2 = run_jobs([{"model": str(ranked), "kv_cache_memory_bytes": MEMORY, "prompts": prompts, "max_tokens": 12,
                     "tensor_parallel_size": 2}], root, env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"})
    unplugged = run_jobs([{"model": str(ranked), "kv_cache_memory_bytes": MEMORY}], root, env={"VLLM_PLUGINS": ""})
    return {"windows": windows, "ortho": ortho, "results": results, "tp2": tp2[0], "unplugged": unplugged[0]}


def test_the_oracle_is_the_dense_model_without_projections(setup):
    from ghost_vllm.checkpoint import load_model
    from ghost_vllm.reference import MODEL_DIR

    x = torch.tensor(setup["windows"])
    with torch.no_grad():
        want = _logprobs(load_model(MODEL_DIR).float().eval()(x, use_cache=False).logits, x)
    assert (_oracle_logprobs(setup["windows"], None) - want).abs().max() <= 1e-4


def test_full_rank_projection_serves_the_dense_model(setup):
    dense, full = setup["results"][:2]
    for r in (dense, full):
        assert r["error"] is None, r["error"]
    off = (torch.tensor(full["logprobs"]) - torch.tensor(dense["logprobs"])).abs().max()
    assert off <= 1e-4, off
    assert full["tokens"] == dense["tokens"]


def test_per_layer_ranks_score_as_the_projected_oracle(setup):
    want = _oracle_logprobs(setup["windows"], setup["ortho"])
    for r in setup["results"][2:4]:  # prefill, then one token per step (decode)
        assert r["error"] is None, r["error"]
        off = (torch.tensor(r["logprobs"]) - want).abs().max()
        assert off <= 1e-4, off
    assert setup["results"][2]["tokens"] == setup["results"][3]["tokens"]
    dense = torch.tensor(setup["results"][0]["logprobs"])
    assert (want - dense).abs().max() > 1e-2  # the projection really changes the model


def test_blocks_follow_the_projected_bytes(setup):
    conv = (K - 1) * (I + 2 * G * N) * 4
    per_seq = sum(conv + H * P * r * 4 for r in RANKS)
    dense = L * (conv + H * P * N * 4)
    int8 = sum(conv + H * P * r + H * 4 for r in RANKS)
    blocks = [r["num_gpu_blocks"] for r in setup["results"][:5]]
    assert blocks == [MEMORY // dense, MEMORY // dense, MEMORY // per_seq, MEMORY // per_seq, MEMORY // int8]


def test_int8_projected_state_scores_as_the_simulated_int8_state(setup):
    assert setup["results"][4]["error"] is None, setup["results"][4]["error"]
    fp32, int8 = (-torch.tensor(r["logprobs"]).sum(1) for r in setup["results"][3:5])  # nll per window
    sim8 = -_simulated_int8_logprobs(setup["windows"], setup["ortho"]).sum(1)
    # tolerances of tests/test_int8_vllm.py (measured here: 4.6e-5 per window, 1.1e-5 in all, 1.1e-3 from float32)
    off = ((int8 - sim8).abs() / sim8).max()
    assert off <= 3e-4 and (int8.sum() - sim8.sum()).abs() / sim8.sum() <= 5e-5, (int8, sim8, fp32)
    assert ((int8 - fp32).abs() / fp32).max() > 10 * off  # the int8 state is really in use


def test_tensor_parallel_2_gives_tp_1s_tokens_and_halves_the_state(setup):
    assert setup["tp2"]["error"] is None, setup["tp2"]["error"]
    assert setup["tp2"]["tokens"] == setup["results"][2]["tokens"]
    # per rank: half the heads, the one group replicated (conv (I + 2·2·N)/2 channels), every rank's state r_l wide
    per_rank = sum((K - 1) * (I + 4 * N) // 2 * 4 + H // 2 * P * r * 4 for r in RANKS)
    assert setup["tp2"]["num_gpu_blocks"] == MEMORY // per_rank


def test_broken_projections_fail_at_start_up(setup):
    misshaped, missing = setup["results"][5:7]
    assert misshaped["num_gpu_blocks"] is None and "backbone.layers.2.mixer.state_proj_in" in misshaped["error"]
    assert missing["num_gpu_blocks"] is None and "backbone.layers.3.mixer.state_proj_out" in missing["error"]


def test_without_the_plugin_the_checkpoint_never_serves(setup):
    err = setup["unplugged"]["error"]
    assert setup["unplugged"]["num_gpu_blocks"] is None and err is not None and "GhostMamba2ForCausalLM" in err
