"""One bytes-per-sequence function: ``ghost_vllm.state.layer_state_bytes`` prices one Mamba layer, and every figure
users see is a sum of it. For a uniform, a per-layer, an int8 and a hybrid checkpoint the figures of ``inspect``,
``plan``, ``compare``, the plugin's ``/metrics`` gauge (its ``state_bytes``), ghost.json and the hybrid planner's
page all equal exact arithmetic written out here."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from ghost_vllm.cli import main as cli


def _expected(cfg: dict, conv_bytes: int, ssm_bytes: int, scale: int = 0) -> int:
    """Σ over Mamba layers of (K−1)·(I + 2·G·N_l)·conv + H·P·r_l·ssm + H·scale (hand arithmetic, no project code)."""
    hybrid = "mamba_num_heads" in cfg
    H = cfg["mamba_num_heads"] if hybrid else cfg["num_heads"]
    P = cfg["mamba_head_dim"] if hybrid else cfg["head_dim"]
    G, K = cfg["n_groups"], cfg.get("conv_kernel", 4)
    N = cfg["ssm_state_size"] if hybrid else cfg["state_size"]
    layers = cfg.get("layer_state_sizes") or [N] * (
        sum(t in ("mamba", "linear_attention") for t in cfg["layers_block_type"]) if hybrid else cfg["num_hidden_layers"])
    ranks = cfg.get("ghost_state_ranks") or layers
    return sum((K - 1) * (H * P + 2 * G * n) * conv_bytes + H * P * r * ssm_bytes + H * scale
               for n, r in zip(layers, ranks))


def _ranks_cell(ranks: list[int]) -> str:
    lo, hi = min(ranks), max(ranks)
    return str(lo) if lo == hi else f"{sum(ranks) / len(ranks):g} (mean; {lo}–{hi})"


@pytest.fixture(scope="module")
def checkpoints(tiny_dirs, tmp_path_factory):
    from tests.helpers.tiny_hybrids import save_tiny_hybrid

    root = tmp_path_factory.mktemp("bytes")
    base = ["--nsamples", "4", "--seq-len", "16", "--no-refit", "--no-progress"]
    out = {}
    for name, model, extra in (
        ("uniform", tiny_dirs[1], ["--sparsity", "0.5", "--allocation", "uniform"]),
        ("per-layer", tiny_dirs[2], ["--state-sizes", "12,4"]),
        ("int8", tiny_dirs[1], ["--sparsity", "0.5", "--allocation", "uniform", "--state-dtype", "int8"]),
        ("balanced", tiny_dirs[2], ["--method", "balanced", "--sparsity", "0.5", "--multiple-of", "4"]),
        ("hybrid", None, ["--sparsity", "0.5"]),
    ):
        if model is None:
            model = root / "hybrid-dense"
            save_tiny_hybrid(model, "nemotron_h", seed=3)
        assert cli(["prune", "--model", str(model), *base, *extra, "--out", str(root / name)]) == 0
        out[name] = root / name
    return out


@pytest.mark.parametrize("name", ["uniform", "per-layer", "int8", "balanced"])
def test_pure_mamba2_figures_are_one_sum(checkpoints, name, calib_text, capsys):
    from ghost_vllm.commands.compare import compare_models, format_comparison
    from ghost_vllm.inspection import inspect_checkpoint, sequence_bytes
    from ghost_vllm.plugin.metrics import state_bytes

    ckpt = checkpoints[name]
    cfg = json.loads((ckpt / "config.json").read_text())
    int8 = name == "int8"
    want = _expected(cfg, 4, 1 if int8 else 4, 4 if int8 else 0)
    info = inspect_checkpoint(ckpt)
    assert info["bytes_per_sequence"] == want
    assert json.loads((ckpt / "ghost.json").read_text())["state_bytes_per_sequence"] == want
    capsys.readouterr()
    assert cli(["plan", str(ckpt), "--cache-memory", "1MiB", "--dtype", "float32", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["bytes_per_sequence"] == want
    (cmp,) = compare_models([str(ckpt)], [str(calib_text)], seq_len=32, max_tokens=64, progress=False)
    assert sequence_bytes(cmp["inspect"])[0] == want
    table = format_comparison([cmp, cmp])  # the per-layer width is shown as what it is; Δ vs the first row
    width = ("8 (mean; 4–12)" if name == "per-layer" else
             "r " + _ranks_cell(cfg["ghost_state_ranks"]) if name == "balanced" else "8")
    assert f"| {ckpt} | {width} | {want:,} | 1.000× |" in table and "+0.00 %" in table
    hf = AutoConfig.from_pretrained(str(ckpt))
    assert state_bytes(hf, None, "float32", "int8" if int8 else "float32") == want


def test_hybrid_figures_are_one_sum(checkpoints):
    from ghost_vllm.inspection import inspect_checkpoint
    from ghost_vllm.planner.hybrid import hybrid_layout

    ckpt = checkpoints["hybrid"]
    cfg = json.loads((ckpt / "config.json").read_text())
    want = _expected(cfg, 4, 4)  # a float32 tiny model; Nemotron-H keeps a float32 SSM state
    assert inspect_checkpoint(ckpt)["bytes_per_sequence"] == want
    layout = hybrid_layout(cfg, dtype="float32")  # one Mamba layer's page: the same sum for one layer
    mamba_layers = sum(t in ("mamba", "linear_attention") for t in cfg["layers_block_type"])
    assert (layout.conv_bytes + layout.ssm_bytes) * mamba_layers == want
