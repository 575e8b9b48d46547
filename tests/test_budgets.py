"""Per-layer state budgets: the exact allocator against brute force, explicit and adaptive budgets through the CLI
(surgery equivalence, checkpoint format, inspect arithmetic, loading), and bad input."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ghost_vllm.allocation import allocate, candidate_sizes, cost_curves
from ghost_vllm.cli import main as cli


def test_allocate_is_exact_against_brute_force():
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        L = 2 + trial % 3
        candidates = [4, 8, 12, 16]
        # non-convex, decreasing-ish curves (a greedy allocator can fail on these)
        costs = torch.rand(L, len(candidates), generator=g, dtype=torch.float64).cumsum(1).flip(1)
        costs[:, -1] = 0.0
        budget = int(torch.randint(L, 4 * L + 1, (1,), generator=g)) * 4
        best = min(
            (sum(float(costs[l, j]) for l, j in enumerate(js)), js)
            for js in itertools.product(range(len(candidates)), repeat=L)
            if sum(candidates[j] for j in js) <= budget
        )
        sizes = allocate(costs, candidates, budget, unit=4)
        assert sum(sizes) <= budget
        got = sum(float(costs[l, candidates.index(n)]) for l, n in enumerate(sizes))
        assert got == pytest.approx(best[0], abs=1e-12)


def test_cost_curves_remove_the_smallest_fisher_per_group():
    f = torch.tensor([[[5.0, 1.0, 3.0, 2.0], [0.5, 4.0, 6.0, 1.5]]])  # [L=1][G=2, N=4]
    curves = cost_curves(list(f), [1, 2, 4])
    # keep 1: remove 3 smallest per group (1+2+3) + (0.5+1.5+4); keep 2: (1+2) + (0.5+1.5); keep 4: nothing
    assert curves.tolist() == [[12.0, 5.0, 0.0]]
    assert candidate_sizes(16, 4, 4) == [4, 8, 12, 16] and candidate_sizes(10, 4, 4) == [4, 8, 10]


@pytest.fixture(scope="module")
def deep_tiny(tmp_path_factory) -> Path:
    """4 layers, N = 16, n_groups 2."""
    from tests.helpers.tiny import save_tiny_checkpoint

    d = tmp_path_factory.mktemp("tiny-4l")
    save_tiny_checkpoint(d, seed=7, n_groups=2, num_hidden_layers=4)
    return d


def _zeroed_dense(dense_dir: Path, ghost: dict):
    from ghost_vllm.checkpoint import load_model
    from ghost_vllm.mamba.layout import InProjLayout
    from ghost_vllm.surgery import zero_channels

    model = load_model(dense_dir)
    layout = InProjLayout.from_config(model.config)
    for block, layer in zip(model.backbone.layers, ghost["layers"]):
        removed = torch.tensor([[n for n in range(layout.state_size) if n not in kept] for kept in layer["kept"]])
        if removed.numel():
            zero_channels(block.mixer, layout, removed)
    return model


def test_explicit_state_sizes_equal_the_zeroed_dense_model(deep_tiny, calib_text, tmp_path):
    from ghost_vllm.checkpoint import load_model
    from ghost_vllm.inspection import inspect_checkpoint
    from ghost_vllm.state import state_size_of

    out = tmp_path / "explicit"
    assert cli(["prune", "--model", str(deep_tiny), "--calibration", str(calib_text), "--nsamples", "8",
                "--seq-len", "32", "--multiple-of", "4", "--state-sizes", "4,16,8,12", "--out", str(out),
                "--no-progress", "--no-refit"]) == 0  # the paper's truncation: equals the zeroed dense model
    cfg = json.loads((out / "config.json").read_text())
    ghost = json.loads((out / "ghost.json").read_text())
    assert cfg["state_size"] == 16 and cfg["layer_state_sizes"] == [4, 16, 8, 12]
    assert ghost["state_sizes"] == [4, 16, 8, 12] and ghost["allocation"] == "explicit"
    assert [len(layer["kept"][0]) for layer in ghost["layers"]] == [4, 16, 8, 12]

    pruned, dense0 = load_model(out), _zeroed_dense(deep_tiny, ghost)
    ids = torch.tensor([[(13 * i + 5) % 300 + 2 for i in range(45)]])  # > 5 chunks of 8
    with torch.no_grad():
        a, b = pruned(ids).logits, dense0(ids).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()

    # bytes: exact per-layer arithmetic, independent of state_size_of: conv (K-1)(I+2GN) + SSM H·P·N, fp32
    H, P, G, K = cfg["num_heads"], cfg["head_dim"], cfg["n_groups"], cfg["conv_kernel"]
    per_layer = [4 * ((K - 1) * (H * P + 2 * G * n) + H * P * n) for n in (4, 16, 8, 12)]
    info = inspect_checkpoint(out)
    assert info["state_size_per_layer"] == [4, 16, 8, 12] and info["bytes_per_layer"] == per_layer
    assert info["bytes_per_sequence"] == sum(per_layer) == ghost["state_bytes_per_sequence"]
    assert info["bytes_per_sequence_original"] == state_size_of(cfg, state_size=16).bytes_per_sequence
    r = subprocess.run([sys.executable, "-m", "ghost_vllm.cli", "inspect", str(out)], capture_output=True, text=True)
    assert "N per layer      4 16 8 12  (explicit allocation)" in r.stdout


def test_plain_transformers_cannot_load_a_per_layer_checkpoint(deep_tiny, calib_text, tmp_path):
    from transformers import Mamba2ForCausalLM

    out = tmp_path / "explicit"
    assert cli(["prune", "--model", str(deep_tiny), "--calibration", str(calib_text), "--nsamples", "4",
                "--seq-len", "16", "--state-sizes", "4,16,8,12", "--out", str(out), "--no-progress"]) == 0
    with pytest.raises(Exception, match="size mismatch|mismatched|shape"):
        Mamba2ForCausalLM.from_pretrained(out)


def test_adaptive_keeps_the_uniform_bytes(deep_tiny, calib_text, tmp_path):
    from ghost_vllm.checkpoint import load_model

    out = tmp_path / "adaptive"
    assert cli(["prune", "--model", str(deep_tiny), "--calibration", str(calib_text), "--nsamples", "8",
                "--seq-len", "32", "--multiple-of", "4", "--sparsity", "0.5", "--allocation", "adaptive",
                "--out", str(out), "--no-progress"]) == 0
    ghost = json.loads((out / "ghost.json").read_text())
    sizes = ghost["state_sizes"]
    assert ghost["allocation"] == "adaptive" and sum(sizes) <= 4 * 8
    assert all(n % 4 == 0 and 4 <= n <= 16 for n in sizes)
    ev = ghost["adaptive"]
    assert ev["state_sizes"] == sizes and ev["uniform_state_size"] == 8 and len(ev["costs"]) == 4
    assert ev["predicted_cost"] <= ev["uniform_predicted_cost"] + 1e-12
    uniform_bytes = json.loads(json.dumps(ghost["state_bytes_per_sequence"]))
    from ghost_vllm.state import state_size_of

    cfg = json.loads((out / "config.json").read_text())
    assert uniform_bytes <= state_size_of(cfg, state_size=8).bytes_per_sequence
    load_model(out)  # loads with per-layer shapes (uniform or not)


def _run(*args):
    return subprocess.run([sys.executable, "-m", "ghost_vllm.cli", *args], capture_output=True, text=True, timeout=300)


def test_bad_budgets_are_one_line_and_write_nothing(deep_tiny, calib_text, tmp_path):
    base = ["prune", "--model", str(deep_tiny), "--calibration", str(calib_text), "--nsamples", "4", "--seq-len", "16",
            "--multiple-of", "4"]
    cases = [
        (["--state-sizes", "4,8,12"], "selection.state_sizes: 3 sizes given, the model has 4 layers"),
        (["--state-sizes", "4,8,12,20"], "selection.state_sizes[3]: 20 is above the model's state_size 16"),
        (["--state-sizes", "4,0,12,16"], "selection.state_sizes[1]: 0 is not allowed"),
        (["--state-sizes", "4,6,12,16"], "selection.state_sizes[1]: 6 is not allowed; every per-layer state size "
                                         "must be a multiple of selection.multiple_of (4)"),
        (["--state-sizes", "4,x"], "not a comma-separated list of integers"),
        (["--state-sizes", "4,8,12,16", "--allocation", "adaptive"], "selection.state_sizes: cannot be combined "
                                                                      "with selection.allocation: adaptive"),
        (["--allocation", "greedy"], "selection.allocation: 'greedy' is not allowed; allowed: auto, uniform, adaptive"),
        (["--allocation", "adaptive", "--min-state-size", "12"], "selection.min_state_size: 12 is above the "
                                                                 "uniform N' = 8"),
        (["--allocation", "adaptive", "--min-state-size", "6"], "selection.min_state_size: 6 is not allowed"),
        (["--min-state-size", "12"], "selection.min_state_size: 12 is above the uniform N' = 8"),  # auto = adaptive
    ]
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        r = _run(*base, *extra, "--out", str(out))
        assert r.returncode == 2, (extra, r.stderr)
        assert message in r.stderr, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (extra, r.stderr)
        assert not out.exists()
    assert not list(tmp_path.glob(".*.tmp-*"))
