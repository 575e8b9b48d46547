"""Balanced truncation (method balanced): the math against hand computation and brute force, the projected scan
against the dense one, the pipeline at r = N against the dense model, the checkpoint round trip, pricing, refusals."""

import json

import pytest
import torch

import ghost_vllm
from ghost_vllm.cli import main
from ghost_vllm.errors import ModelError, RecipeError
from ghost_vllm.mamba.reference import project_bc, ssm_scan
from ghost_vllm.recipe import SelectionSpec
from ghost_vllm.reduce.balanced import (GramianAccumulator, Gramians, allocate_ranks, balanced_projection,
                                        discarded_share)


def _pairs_loss(Cs: torch.Tensor, hs: torch.Tensor, M: torch.Tensor) -> float:
    """Σ over every pair (C_i, h_j) of (C_iᵀ M h_j)²: the output error of M = I − S·T with C independent of h."""
    return float(torch.einsum("in,nm,jm->ij", Cs, M, hs).pow(2).sum())


def test_gramian_accumulator_by_hand():
    steps = [(torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[3.0, 0.0]]])),
             (torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([[[1.0, 1.0]]]))]
    acc = GramianAccumulator(n_groups=1, state_size=2, heads_per_group=1, head_dim=1, state_stride=1)
    for h, C in steps:
        acc.update(h, C)
    g = acc.finalize()
    torch.testing.assert_close(g.P[0], torch.tensor([[1.0, 2.0], [2.0, 5.0]], dtype=torch.float64))
    torch.testing.assert_close(g.Q[0], torch.tensor([[10.0, 1.0], [1.0, 1.0]], dtype=torch.float64) / 2)
    assert g.tokens == 2
    # stride 2: P from the second step's state only, scaled to both steps; Q still sees every step
    acc = GramianAccumulator(n_groups=1, state_size=2, heads_per_group=1, head_dim=1, state_stride=2)
    for h, C in steps:
        acc.update(h, C)
    g = acc.finalize()
    torch.testing.assert_close(g.P[0], 2 * torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(g.Q[0], torch.tensor([[10.0, 1.0], [1.0, 1.0]], dtype=torch.float64) / 2)
    with pytest.raises(AssertionError, match="stride"):
        one = GramianAccumulator(n_groups=1, state_size=2, heads_per_group=1, head_dim=1, state_stride=4)
        one.update(*steps[0])
        one.finalize()


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_discarded_energy_equals_tail_of_hankel_singular_values(rank):
    """On independent C and h the measured output-energy loss is Σ_{i>r} σ_i²; a transposed T does worse."""
    g = torch.Generator().manual_seed(0)
    N = 8
    mix_h, mix_c = torch.randn(N, N, generator=g, dtype=torch.float64), torch.randn(N, N, generator=g, dtype=torch.float64)
    hs = torch.randn(200, N, generator=g, dtype=torch.float64) @ mix_h  # correlated, low-ish rank directions
    Cs = torch.randn(150, N, generator=g, dtype=torch.float64) @ mix_c
    P, Q = hs.T @ hs, Cs.T @ Cs
    proj = balanced_projection(Gramians(P[None], Q[None], 150), rank)
    T, S = proj.T[0].double(), proj.S[0].double()
    loss = _pairs_loss(Cs, hs, torch.eye(N, dtype=torch.float64) - S @ T)
    tail = float(proj.hsv[0, rank:].pow(2).sum())
    assert loss == pytest.approx(tail, rel=1e-4, abs=1e-6 * float(proj.hsv[0].pow(2).sum()))
    torch.testing.assert_close(T @ S, torch.eye(rank, dtype=torch.float64), atol=1e-4, rtol=0)
    if rank < N:
        wrong = _pairs_loss(Cs, hs, torch.eye(N, dtype=torch.float64) - T.T @ S.T)  # transposed: S ↔ Tᵀ
        assert wrong > 1.5 * tail + 1e-9
        assert discarded_share(proj.hsv, rank) == pytest.approx(tail / float(proj.hsv[0].pow(2).sum()), rel=1e-6)


def test_projected_scan_state_is_T_times_the_dense_state():
    g = torch.Generator().manual_seed(1)
    b, T_, H, P, G, N, r = 2, 12, 4, 3, 2, 8, 5
    x = torch.randn(b, T_, H, P, generator=g, dtype=torch.float64)
    dt = torch.rand(b, T_, H, generator=g, dtype=torch.float64)
    A = -torch.rand(H, generator=g, dtype=torch.float64) - 0.1
    B = torch.randn(b, T_, G, N, generator=g, dtype=torch.float64)
    C = torch.randn(b, T_, G, N, generator=g, dtype=torch.float64)
    D = torch.randn(H, generator=g, dtype=torch.float64)
    Tm = torch.randn(G, r, N, generator=g, dtype=torch.float64)
    Sm = torch.randn(G, N, r, generator=g, dtype=torch.float64)
    Bp, Cp = project_bc(B, C, Tm, Sm)
    _, h = ssm_scan(x, dt, A, B, C, D)
    yp, hp = ssm_scan(x, dt, A, Bp.double(), Cp.double(), D)
    Th = torch.einsum("grn,bgkpn->bgkpr", Tm.float().double(), h.reshape(b, G, H // G, P, N)).reshape(b, H, P, r)
    torch.testing.assert_close(hp, Th, atol=1e-5, rtol=1e-5)
    # y' = Cᵀ S T h + D x at every step
    ys = []
    for t in range(1, T_ + 1):
        _, ht = ssm_scan(x[:, :t], dt[:, :t], A, B[:, :t], C[:, :t], D)
        STh = torch.einsum("gnr,grm,bgkpm->bgkpn", Sm, Tm, ht.reshape(b, G, H // G, P, N)).reshape(b, H, P, N)
        Ct = C[:, t - 1].repeat_interleave(H // G, dim=1)
        ys.append(torch.einsum("bhpn,bhn->bhp", STh, Ct) + D[:, None] * x[:, t - 1])
    torch.testing.assert_close(yp, torch.stack(ys, 1), atol=1e-4, rtol=1e-4)
    with pytest.raises(AssertionError):  # a transposed T is not the same state
        torch.testing.assert_close(hp, torch.einsum("gnr,bgkpn->bgkpr", Sm, h.reshape(b, G, H // G, P, N))
                                   .reshape(b, H, P, r), atol=1e-3, rtol=1e-3)


def test_allocate_ranks_budget_multiples_and_greedy_order():
    flat = torch.ones(1, 16, dtype=torch.float64)  # energy spread evenly: every step saves the same share
    steep = torch.tensor([[10.0, 5.0, 1.0, 0.5] + [0.01] * 12], dtype=torch.float64)  # nearly rank 4
    ranks = allocate_ranks([flat, steep], total=16, multiple_of=4, min_rank=4)
    assert sum(ranks) == 16 and all(r % 4 == 0 and 4 <= r <= 16 for r in ranks)
    assert ranks == [12, 4]  # the steep layer keeps its 4 dominant directions; the rest goes to the flat one


def _calib(tiny_dir, n=8, seq=32):
    from ghost_vllm.calib import load_texts, make_windows
    from ghost_vllm.checkpoint import load_tokenizer
    from ghost_vllm.reference import CALIBRATION_TEXT

    tok = load_tokenizer(tiny_dir)
    return make_windows([CALIBRATION_TEXT.read_text(encoding="utf-8")[:60_000]], tok, n, seq, 0, "slice"), tok


@pytest.mark.parametrize("n_groups", [1, 2])
def test_full_rank_projection_is_the_dense_model(tiny_dirs, n_groups):
    from ghost_vllm.checkpoint import load_model

    src = tiny_dirs[n_groups]
    calib, tok = _calib(src)
    dense, model = load_model(src), load_model(src)
    pruned = ghost_vllm.prune(model, calib, SelectionSpec("balanced", 0.0, 1, allocation="uniform", refit=False),
                              progress=False)
    assert pruned.state_ranks == [16, 16]
    x = torch.randint(2, len(tok), (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, out = dense(x, use_cache=False).logits, model(x, use_cache=False).logits
    assert float((out - ref).abs().max() / ref.abs().max()) <= 1e-5
    # S from the other layer: no longer the dense model
    m0, m1 = model.backbone.layers[0].mixer, model.backbone.layers[1].mixer
    m0.state_proj_out, m1.state_proj_out = m1.state_proj_out.clone(), m0.state_proj_out.clone()
    with torch.no_grad():
        swapped = model(x, use_cache=False).logits
    assert float((swapped - ref).abs().max() / ref.abs().max()) > 1e-2


def test_checkpoint_round_trip_pricing_and_refusals(tiny_dirs, calib_text, tmp_path):
    from safetensors.torch import load_file, save_file

    from ghost_vllm.checkpoint import load_model, validate_model_dir
    from ghost_vllm.inspection import inspect_checkpoint

    src, out = tiny_dirs[2], tmp_path / "bal"
    assert main(["prune", "--model", str(src), "--calibration", str(calib_text), "--nsamples", "8", "--seq-len", "32",
                 "--method", "balanced", "--sparsity", "0.5", "--multiple-of", "4", "--out", str(out),
                 "--no-progress"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    ghost = json.loads((out / "ghost.json").read_text())
    ranks = cfg["ghost_state_ranks"]
    assert cfg["state_size"] == 16 and "layer_state_sizes" not in cfg and cfg["architectures"] == ["GhostMamba2ForCausalLM"]
    assert ghost["allocation"] == "hankel" and ghost["state_ranks"] == ranks and sum(ranks) == 16
    assert all(r % 4 == 0 for r in ranks) and len(ghost["hankel_singular_values"]) == 2
    assert all(0 < e <= 1 for e in ghost["energy_kept"]) and "refit" in ghost
    # exact bytes: conv at N = 16, SSM at r_l (H = 8, P = 8, G = 2, K = 4, float32)
    want = sum(3 * (64 + 2 * 2 * 16) * 4 + 8 * 8 * r * 4 for r in ranks)
    info = inspect_checkpoint(out)
    assert info["bytes_per_sequence"] == ghost["state_bytes_per_sequence"] == want
    assert info["state_ranks"] == ranks
    # the reloaded model = the in-memory twin
    calib, tok = _calib(src)
    from ghost_vllm.calib import load_texts, make_windows
    from ghost_vllm.checkpoint import load_tokenizer

    calib = make_windows(load_texts(str(calib_text)), load_tokenizer(src), 8, 32, 0, str(calib_text))
    twin = load_model(src)
    ghost_vllm.prune(twin, calib, SelectionSpec("balanced", 0.5, 4), progress=False)
    reloaded = load_model(out)
    x = torch.randint(2, len(tok), (2, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x, use_cache=False).logits, twin(x, use_cache=False).logits,
                                   atol=1e-6, rtol=0)
    # a mis-shaped projection, a missing one, and projections without the config key are refused in one line
    weights = load_file(out / "model.safetensors")
    key = "backbone.layers.1.mixer.state_proj_in"
    for name, edit in (("misshaped", lambda w: w.update({key: w[key][:, :-1].contiguous()})), ("missing", lambda w: w.pop(key))):
        bad = tmp_path / name
        bad.mkdir()
        for f in out.iterdir():
            if f.name != "model.safetensors":
                (bad / f.name).write_bytes(f.read_bytes())
        w = dict(weights)
        edit(w)
        save_file(w, bad / "model.safetensors")
        with pytest.raises(ModelError, match=key.replace(".", r"\.")):
            validate_model_dir(bad)
    stripped = tmp_path / "stripped"
    stripped.mkdir()
    for f in out.iterdir():
        (stripped / f.name).write_bytes(f.read_bytes())
    (stripped / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "ghost_state_ranks"}))
    with pytest.raises(ModelError, match="ghost_state_ranks"):
        validate_model_dir(stripped)


def test_refusals_before_loading(tiny_dirs):
    from ghost_vllm.pruning import check_selection
    from tests.helpers.tiny_hybrids import tiny_hybrid_config

    cfg = json.loads((tiny_dirs[1] / "config.json").read_text())
    with pytest.raises(RecipeError, match="hankel"):
        check_selection(cfg, SelectionSpec("ghost", 0.5, allocation="hankel"))
    assert check_selection(cfg, SelectionSpec("balanced", 0.5)).allocation == "hankel"
    assert check_selection(cfg, SelectionSpec("ghost", 0.5)).allocation == "adaptive"
    hybrid = tiny_hybrid_config("nemotron_h").to_dict()
    assert check_selection(hybrid, SelectionSpec("balanced", 0.5)).allocation == "uniform"  # vLLM pads hybrid pages
    with pytest.raises(RecipeError, match="per-layer state budgets"):
        check_selection(hybrid, SelectionSpec("balanced", 0.5, allocation="hankel"))
    falcon = tiny_hybrid_config("falcon_h1").to_dict()  # µP multipliers around the mixer: not projected (yet)
    with pytest.raises(RecipeError, match="not FalconH1ForCausalLM.*use ghost"):
        check_selection(falcon, SelectionSpec("balanced", 0.5, allocation="uniform"))
    assert main(["prune", "--model", str(tiny_dirs[1]), "--method", "balanced", "--sparsity", "0.5",
                 "--multiple-of", "3", "--state-sizes", "8,7", "--no-progress"]) == 2


def test_state_format_simulation_runs_the_projected_state(tiny_dirs):
    """eval --state-dtype / compare simulate the served state through the same projection, and leave it in place."""
    from ghost_vllm.checkpoint import load_model
    from ghost_vllm.loadtest.state_formats import FORMATS, stored_state_mixers

    src = tiny_dirs[1]
    calib, tok = _calib(src)
    model = load_model(src)
    ghost_vllm.prune(model, calib, SelectionSpec("balanced", 0.5, 4, allocation="uniform", refit=False),
                     progress=False)
    x = torch.randint(2, len(tok), (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = model(x, use_cache=False).logits
        with stored_state_mixers(model, FORMATS["float32"]):
            sequential = model(x, use_cache=False).logits
        with stored_state_mixers(model, FORMATS["int8"]):
            int8 = model(x, use_cache=False).logits
        after = model(x, use_cache=False).logits
    torch.testing.assert_close(sequential, before, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert 0 < float((int8 - before).abs().max()) < 0.05 * float(before.abs().max())


@pytest.mark.parametrize("model_type", ["nemotron_h", "granitemoehybrid", "zamba2"])
def test_hybrid_full_rank_projection_is_the_dense_model(model_type):
    """Through the family's own transformers class (attention, MLP and shared blocks around the mixers) the
    projection at r = N is the dense model; a rank below N is not."""
    from tests.helpers.tiny_hybrids import tiny_hybrid_model

    dense = tiny_hybrid_model(model_type, seed=1)
    tokens = torch.randint(2, 300, (8, 32), generator=torch.Generator().manual_seed(0))
    x = tokens[:2]
    with torch.no_grad():
        ref = dense(x, use_cache=False).logits
    outs = {}
    for kappa in (0.0, 0.5):
        model = tiny_hybrid_model(model_type, seed=1)
        ghost_vllm.prune(model, tokens, SelectionSpec("balanced", kappa, 1, allocation="uniform", refit=False),
                         batch_size=4, progress=False)
        with torch.no_grad():
            outs[kappa] = float((model(x, use_cache=False).logits - ref).abs().max() / ref.abs().max())
    assert outs[0.0] <= 1e-5, outs
    assert outs[0.5] > 1e-4, outs


def test_hybrid_checkpoint_round_trip_is_evaluated_not_served(tmp_path):
    """A projected Nemotron-H checkpoint: written, reloaded through transformers' class (= the in-memory twin),
    priced at r by inspect; plan and the plugin's validation refuse it in one line (the plugin does not serve a
    projected hybrid state yet)."""
    from ghost_vllm.calib import load_texts, make_windows
    from ghost_vllm.checkpoint import load_model, load_tokenizer
    from ghost_vllm.errors import CheckpointError
    from ghost_vllm.inspection import inspect_checkpoint
    from ghost_vllm.plugin.validate import validate_ghost_checkpoint
    from ghost_vllm.reference import CALIBRATION_TEXT
    from tests.helpers.tiny_hybrids import save_tiny_hybrid

    src, out = tmp_path / "dense", tmp_path / "bal"
    save_tiny_hybrid(src, "nemotron_h", seed=2)
    text = CALIBRATION_TEXT.read_text(encoding="utf-8")[:40_000]
    (tmp_path / "calib.txt").write_text(text, encoding="utf-8")
    args = ["--model", str(src), "--calibration", str(tmp_path / "calib.txt"), "--nsamples", "8", "--seq-len", "32",
            "--method", "balanced", "--sparsity", "0.5", "--no-refit", "--no-progress"]
    assert main(["prune", *args, "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["ghost_state_ranks"] == [8] * len(cfg["ghost_state_ranks"]) and cfg["ssm_state_size"] == 16
    assert cfg["architectures"] == ["GhostNemotronHForCausalLM"]
    calib = make_windows(load_texts(str(tmp_path / "calib.txt")), load_tokenizer(src), 8, 32, 0, "calib")
    tok = load_tokenizer(src)
    twin = load_model(src)
    ghost_vllm.prune(twin, calib, SelectionSpec("balanced", 0.5, allocation="uniform", refit=False), progress=False)
    reloaded = load_model(out)
    x = torch.randint(2, len(tok), (2, 24), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x, use_cache=False).logits, twin(x, use_cache=False).logits,
                                   atol=1e-6, rtol=0)
    info = inspect_checkpoint(out)
    L = len(cfg["ghost_state_ranks"])
    # this tiny model is float32 (conv state too; NemotronH keeps a float32 SSM state): conv at N = 16, SSM at r = 8
    lay = json.loads((src / "config.json").read_text())
    H, P, G, K = lay["mamba_num_heads"], lay["mamba_head_dim"], lay["n_groups"], lay.get("conv_kernel", 4)
    assert info["bytes_per_sequence"] == L * ((K - 1) * (H * P + 2 * G * 16) * 4 + H * P * 8 * 4)
    assert info["state_ranks"] == cfg["ghost_state_ranks"] and "not served" in info["not_served"]
    assert main(["plan", "reference", str(out), "--cache-memory", "64MiB"]) == 2
    with pytest.raises(CheckpointError, match="not served by the plugin"):
        validate_ghost_checkpoint(out)
