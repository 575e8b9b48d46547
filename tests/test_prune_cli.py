"""End to end through the CLI: prune → save → from_pretrained round trip, ghost.json, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ghost_vllm.cli import main


def _prune(model_dir, out, calib, *extra):
    return main(["prune", "--model", str(model_dir), "--calibration", str(calib), "--nsamples", "8",
                 "--seq-len", "32", "--out", str(out), "--no-progress", *extra])


@pytest.mark.parametrize("n_groups", [1, 2])
def test_round_trip_matches_in_memory_pruned_model(tiny_dirs, calib_text, tmp_path, n_groups):
    from transformers import Mamba2ForCausalLM

    from ghost_vllm.calib import load_texts, make_windows
    from ghost_vllm.checkpoint import load_model, load_tokenizer
    from ghost_vllm.mamba.norm import patch_group_norm
    import ghost_vllm
    from ghost_vllm.recipe import SelectionSpec

    src = tiny_dirs[n_groups]
    out = tmp_path / "pruned"
    assert _prune(src, out, calib_text, "--method", "ghost", "--sparsity", "0.5", "--allocation", "uniform") == 0

    # in-memory twin of what the CLI did
    tok = load_tokenizer(src)
    calib = make_windows(load_texts(str(calib_text)), tok, 8, 32, 0, str(calib_text))
    twin = load_model(src)
    report = ghost_vllm.prune(twin, calib, SelectionSpec(sparsity=0.5, allocation="uniform"), batch_size=8, progress=False).report

    reloaded = Mamba2ForCausalLM.from_pretrained(out).eval()  # plain transformers, no ghost code
    patch_group_norm(reloaded)
    x = torch.randint(2, len(tok), (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, twin(x).logits, atol=1e-6, rtol=0)

    ghost = json.loads((out / "ghost.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["GhostMamba2ForCausalLM"] and cfg["model_type"] == "mamba2"
    assert cfg["state_size"] == 8 and ghost["state_size"] == 8 and ghost["state_size_original"] == 16
    assert ghost["method"] == "ghost" and ghost["sparsity"] == 0.5
    assert [layer["kept"] for layer in ghost["layers"]] == [layer.kept for layer in report.layers]
    assert all(len(layer["kept"]) == n_groups and len(layer["kept"][0]) == 8 for layer in ghost["layers"])
    assert set(ghost["layers"][0]["score"]) >= {"min", "max", "mean", "kept_mean", "removed_mean"}
    for key in ("source", "nsamples", "seq_len", "seed", "tokens"):
        assert key in ghost["calibration"]
    assert ghost["calibration"]["tokens"] == 256
    assert len(ghost["source"]["sha256"]) == 64 and ghost["version"]
    assert (out / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".pruned.tmp-*"))


def test_recipe_file_and_flag_override(tiny_dirs, calib_text, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{path: {tiny_dirs[1]}}}\n"
        f"calibration: {{source: {calib_text}, nsamples: 4, seq_len: 16}}\n"
        f"selection: {{method: magnitude, sparsity: 0.25, multiple_of: 4, allocation: uniform}}\n"
        f"output: {{dir: {tmp_path / 'out'}}}\n"
    )
    assert main(["prune", str(recipe), "--sparsity", "0.5", "--no-progress"]) == 0
    ghost = json.loads((tmp_path / "out" / "ghost.json").read_text())
    assert ghost["method"] == "magnitude" and ghost["sparsity"] == 0.5 and ghost["state_size"] == 8
    assert ghost["recipe"]["selection"]["multiple_of"] == 4


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ghost_vllm.cli", *args], capture_output=True, text=True, timeout=300)


def _bad_cases(tmp: Path, tiny: Path, calib: Path):
    notmamba = tmp / "llama"
    notmamba.mkdir()
    (notmamba / "config.json").write_text(json.dumps({"model_type": "llama"}))
    short = tmp / "short.txt"
    short.write_text("only a few words here\n")
    existing = tmp / "exists"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    recipe = tmp / "bad.yaml"
    recipe.write_text("selection:\n  methd: ghost\n")
    base = ["--model", str(tiny), "--calibration", str(calib), "--nsamples", "4", "--seq-len", "16"]
    return [
        ("non-mamba2", ["--model", str(notmamba), "--calibration", str(calib)], "model_type is 'llama'"),
        ("sparsity >= 1", [*base, "--sparsity", "1.0"], "selection.sparsity: 1.0"),
        ("negative sparsity", [*base, "--sparsity", "-0.1"], "selection.sparsity: -0.1"),
        ("N' = 0", [*base, "--sparsity", "0.99"], "leaves N' = 0"),
        ("unknown method", [*base, "--method", "obs"], "selection.method: 'obs'"),
        ("missing calibration", [*base, "--calibration", str(tmp / "nope.txt")], "no such file"),
        ("short calibration", [*base, "--calibration", str(short)], "windows of 16"),
        ("unknown recipe key", [str(recipe), *base], "selection.methd: unknown key"),
        ("existing output", [*base, "--out", str(existing)], "already exists"),
    ]


def test_bad_input_is_one_clear_line_and_writes_nothing(tiny_dirs, calib_text, tmp_path):
    for name, args, message in _bad_cases(tmp_path, tiny_dirs[1], calib_text):
        out = tmp_path / ("out-" + "".join(ch for ch in name if ch.isalnum()))
        if "--out" not in args:
            args = [*args, "--out", str(out)]
        r = _run_cli("prune", *args)
        assert r.returncode != 0, name
        assert message in r.stderr, (name, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (name, r.stderr)
        assert "Traceback" not in r.stderr
        if "--out" in args and name != "existing output":
            assert not out.exists(), name
    assert (tmp_path / "exists" / "keep.txt").read_text() == "x"  # an existing target is untouched
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_overwrite_replaces_existing_output(tiny_dirs, calib_text, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert _prune(tiny_dirs[1], out, calib_text, "--overwrite") == 0
    assert (out / "ghost.json").is_file() and not (out / "stale.txt").exists()


def test_inspect_reports_exact_state_bytes(tiny_dirs, calib_text, tmp_path):
    from ghost_vllm.inspection import inspect_checkpoint

    out = tmp_path / "p"
    assert _prune(tiny_dirs[2], out, calib_text, "--sparsity", "0.75", "--allocation", "uniform") == 0
    info = inspect_checkpoint(out)
    # tiny: 2 layers, H=8, P=8, G=2, K=4, hidden 32 → I = 64; fp32
    def per_seq(n):
        return 2 * 4 * ((4 - 1) * (64 + 2 * 2 * n) + 8 * 8 * n)
    assert info["state_size_per_layer"] == [4, 4]
    assert info["bytes_per_sequence"] == per_seq(4)
    assert info["bytes_per_sequence_original"] == per_seq(16)
    assert info["state_reduction_ratio"] == pytest.approx(per_seq(16) / per_seq(4))
    r = _run_cli("inspect", str(out))
    assert r.returncode == 0 and "16 → 4" in r.stdout
