"""Readout refit: the closed form against an independent least-squares solve, the layer reconstruction error it
optimises strictly lower than the un-refit pruned layer's (measured by running the layers, not from the fitting
code's statistics), κ = 0 the identity, and the checkpoint equal to itself through transformers and vLLM."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from ghost_vllm.cli import main as cli
from ghost_vllm.refit import ReadoutStats


def test_closed_form_is_the_ridge_least_squares_solution():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(500, 12, generator=g, dtype=torch.float64)
    w_true = torch.randn(5, 12, generator=g, dtype=torch.float64)
    t = u @ w_true.T + 0.1 * torch.randn(500, 5, generator=g, dtype=torch.float64)
    w0 = torch.randn(5, 12, generator=g, dtype=torch.float64)
    stats = ReadoutStats(12, 5)
    for a, b in zip(u.split(77), t.split(77)):  # streamed in uneven batches
        stats.update(a.float(), b.float())
    alpha = 0.01
    lam = alpha * float((u.float().double().pow(2).sum(0)).mean())
    # the augmented least-squares problem [u; √λ I] Wᵀ = [t; √λ W0ᵀ], solved by lstsq
    a = torch.cat([u.float().double(), lam ** 0.5 * torch.eye(12, dtype=torch.float64)])
    b = torch.cat([t.float().double(), lam ** 0.5 * w0.T])
    expected = torch.linalg.lstsq(a, b).solution.T
    got = stats.solve(w0, alpha)
    assert torch.allclose(got, expected, atol=1e-8)
    for w in (w0, got, w_true):  # error() from statistics = the direct sum
        direct = float((t.float().double() - u.float().double() @ w.T).pow(2).sum())
        assert stats.error(w) == pytest.approx(direct, rel=1e-9)
    assert stats.error(got) < stats.error(w0)


def _calib_tokens(n=8, T=48, vocab=96, seed=3):
    return torch.randint(2, vocab, (n, T), generator=torch.Generator().manual_seed(seed))


def _layer_inputs(model, tokens) -> list[torch.Tensor]:
    """Inputs of every block (residual stream) for ``tokens``, by running the model's own layers."""
    out = []
    with torch.no_grad():
        h = model.backbone.embeddings(tokens)
        for block in model.backbone.layers:
            out.append(h)
            h = block(h)
    return out


def _mixer(block, h):
    with torch.no_grad():
        return block.mixer(block.norm(h.to(block.norm.weight.dtype)))


@pytest.mark.parametrize("target,n_groups,sizes", [("global", 1, None), ("global", 2, None), ("local", 1, None),
                                                   ("local", 2, None), ("global", 2, [12, 4, 8])])
def test_refit_strictly_lowers_the_layer_reconstruction_error(n_groups, target, sizes):
    """Measured by running layers, not from the fitting code's statistics: on the refit model's own layer inputs,
    (a) ``local``: the mixer output vs the dense layer's on the same inputs; (b) ``global``: the block output vs the
    dense network's activation at that depth — each for the refit layer and for the same pruned layer with its dense
    out_proj (un-refit). ``sizes``: a per-layer checkpoint (N'_l differ), as the adaptive allocation writes."""
    from tests.helpers.tiny import tiny_model
    import ghost_vllm
    from ghost_vllm.recipe import SelectionSpec
    from ghost_vllm.refit import RefitSpec

    dense = tiny_model(seed=5, n_groups=n_groups, num_hidden_layers=3)
    tokens = _calib_tokens()
    refit = copy.deepcopy(dense)
    report = ghost_vllm.prune(refit, tokens, SelectionSpec(sparsity=0.5, allocation="uniform", refit=True, state_sizes=sizes), batch_size=4,
                              progress=False, refit=RefitSpec(target)).report
    assert report.state_sizes == (sizes or [8, 8, 8])
    assert len(report.refit) == 3 and all(r.error_after < r.error_before and r.target == target for r in report.refit)
    dense_acts = _layer_inputs(dense, tokens)
    for l, h in enumerate(_layer_inputs(refit, tokens)):
        layer, dense_layer = refit.backbone.layers[l], dense.backbone.layers[l]
        unrefit = copy.deepcopy(layer)
        unrefit.mixer.out_proj.weight.data.copy_(dense_layer.mixer.out_proj.weight)
        with torch.no_grad():
            if target == "local":
                goal = _mixer(dense_layer, h)
                got_refit, got_unrefit = _mixer(layer, h), _mixer(unrefit, h)
            else:  # the dense network's activation after layer l, relative to this layer's input
                goal = dense_layer(dense_acts[l]).float() - h.float()
                got_refit, got_unrefit = layer(h).float() - h.float(), unrefit(h).float() - h.float()
        e_refit = float((got_refit - goal).double().pow(2).sum())
        e_unrefit = float((got_unrefit - goal).double().pow(2).sum())
        assert e_refit < e_unrefit, (l, e_refit, e_unrefit)
        # and the report's relative figures are these errors over Σ||t||²
        norm = float(goal.double().pow(2).sum())
        assert report.refit[l].error_before == pytest.approx(e_unrefit / norm, rel=1e-3)
        assert report.refit[l].error_after == pytest.approx(e_refit / norm, rel=1e-3)


def test_refit_at_zero_sparsity_is_the_identity():
    from tests.helpers.tiny import tiny_model
    import ghost_vllm
    from ghost_vllm.recipe import SelectionSpec

    dense = tiny_model(seed=6, n_groups=2, num_hidden_layers=2)
    model = copy.deepcopy(dense)
    report = ghost_vllm.prune(model, _calib_tokens(), SelectionSpec(sparsity=0.0, allocation="uniform", refit=True), batch_size=4,
                              progress=False).report
    for a, b in zip(dense.state_dict().values(), model.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert all(r.error_before == pytest.approx(0.0, abs=1e-10) for r in report.refit)


@pytest.fixture(scope="module")
def refit_checkpoint(tmp_path_factory):
    from tests.helpers.tiny import save_tiny_checkpoint
    from ghost_vllm.reference import CALIBRATION_TEXT

    root = tmp_path_factory.mktemp("refit")
    save_tiny_checkpoint(root / "dense", seed=7, n_groups=2)
    assert cli(["prune", "--model", str(root / "dense"), "--calibration", str(CALIBRATION_TEXT), "--nsamples", "8",
                "--seq-len", "32", "--sparsity", "0.5", "--refit", "--allocation", "uniform", "--out", str(root / "refit"),
                "--no-progress"]) == 0
    return root


def test_refit_checkpoint_records_the_refit_and_loads_with_transformers(refit_checkpoint):
    from transformers import Mamba2ForCausalLM

    from ghost_vllm.checkpoint import load_model

    g = json.loads((refit_checkpoint / "refit" / "ghost.json").read_text())
    assert g["recipe"]["selection"]["refit"] is True
    assert g["refit"]["weights"] == ["out_proj"] and len(g["refit"]["layers"]) == g["num_hidden_layers"]
    assert all(r["error_after"] < r["error_before"] for r in g["refit"]["layers"])
    plain = Mamba2ForCausalLM.from_pretrained(str(refit_checkpoint / "refit")).eval()
    ours = load_model(refit_checkpoint / "refit")
    dense = load_model(refit_checkpoint / "dense")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        assert not torch.allclose(ours.backbone.layers[0].mixer.out_proj.weight,
                                  dense.backbone.layers[0].mixer.out_proj.weight)
        # n_groups 2: transformers' own gated norm ignores groups, so compare the weights it loaded
        for a, b in zip(plain.state_dict().values(), ours.state_dict().values()):
            assert torch.equal(a, b)
        assert torch.isfinite(ours(ids).logits).all()


@pytest.mark.vllm
def test_vllm_serves_the_refit_checkpoint_with_transformers_tokens(refit_checkpoint, tmp_path):
    from ghost_vllm.checkpoint import load_model
    from tests.test_vllm_engine import LONG, SHORT, run_jobs

    model = load_model(refit_checkpoint / "refit")
    expected = []
    for prompt in (SHORT, LONG):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(10):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        expected.append(ids[len(prompt):])
    (res,) = run_jobs([{"model": str(refit_checkpoint / "refit"), "prompts": [SHORT, LONG], "max_tokens": 10}],
                      tmp_path, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert res["error"] is None and res["tokens"] == expected
