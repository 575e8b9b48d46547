"""Real-model readiness without the Hub: mamba_ssm checkpoints read straight into the HF module, Hub ids resolved
from the local Hugging Face cache, and Codestral-7B's grouped shapes (n_groups 8, d_state 128) pruned end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ghost_vllm.cli import main as cli
from ghost_vllm.errors import ModelError
from ghost_vllm.mamba.mamba_ssm_format import (
    codestral_like_config,
    convert_mamba_ssm_dir,
    hf_config_from_mamba_ssm,
    load_mamba_ssm_model,
    mamba_ssm_config,
    save_random_mamba_ssm_checkpoint,
)
from tests.test_mamba_ssm_layout import reference_logits

ROOT = Path(__file__).resolve().parents[1]
NEOX = ROOT.parent / "shared" / "data" / "tokenizers" / "gpt-neox-20b.json"


@pytest.mark.parametrize("ngroups, fmt, tied", [(1, "bin", True), (2, "safetensors", True), (2, "bin", False)])
def test_direct_load_matches_independent_reference(tmp_path, ngroups, fmt, tied):
    cfg = mamba_ssm_config(d_model=32, n_layer=2, vocab_size=90, pad_vocab_size_multiple=16, tie_embeddings=tied,
                           ssm_cfg={"d_state": 8, "headdim": 8, "ngroups": ngroups, "chunk_size": 8})
    src = save_random_mamba_ssm_checkpoint(tmp_path / "src", cfg, seed=5 + ngroups, fmt=fmt)
    model = load_mamba_ssm_model(src, "float32")
    ids = torch.randint(0, 90, (1, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(ids).logits[0].double()
    sd = (torch.load(src / "pytorch_model.bin", weights_only=True) if fmt == "bin"
          else __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(src / "model.safetensors")))
    sd.setdefault("lm_head.weight", sd["backbone.embedding.weight"])
    torch.testing.assert_close(got, reference_logits(sd, cfg, ids), atol=2e-4, rtol=1e-4)
    assert (model.lm_head.weight is model.backbone.embeddings.weight) == tied


def test_direct_load_converts_dtype_and_keeps_bf16(tmp_path):
    cfg = mamba_ssm_config(d_model=32, n_layer=1, vocab_size=64, ssm_cfg={"d_state": 8, "headdim": 8})
    src = save_random_mamba_ssm_checkpoint(tmp_path / "src", cfg, fmt="bin", dtype=torch.bfloat16)
    assert {p.dtype for p in load_mamba_ssm_model(src, "auto").parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_mamba_ssm_model(src, "float32").parameters()} == {torch.float32}


def test_weights_that_disagree_with_the_config_are_named(tmp_path):
    cfg = mamba_ssm_config(d_model=32, n_layer=2, vocab_size=64, ssm_cfg={"d_state": 8, "headdim": 8})
    src = save_random_mamba_ssm_checkpoint(tmp_path / "src", cfg, fmt="bin")
    wrong = json.loads((src / "config.json").read_text())
    wrong["ssm_cfg"]["d_state"] = 16
    (src / "config.json").write_text(json.dumps(wrong))
    with pytest.raises(ModelError, match=r"backbone\.layers\.0\.mixer\.\S+ has shape .* config\.json implies"):
        load_mamba_ssm_model(src)
    wrong["ssm_cfg"]["d_state"] = 8
    wrong["n_layer"] = 3
    (src / "config.json").write_text(json.dumps(wrong))
    with pytest.raises(ModelError, match=r"weight\(s\) missing, e\.g\. backbone\.layers\.2\."):
        load_mamba_ssm_model(src)


def _fake_hub_cache(cache: Path, repo_id: str, files: Path) -> Path:
    """The on-disk layout huggingface_hub's cache uses (models--org--name/{refs/main, snapshots/<rev>/...})."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in files.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    return snap


def test_hub_ids_resolve_from_the_local_cache_offline(tmp_path):
    """Model and tokenizer given as Hub ids come from the local HF cache (HF_HUB_OFFLINE=1: never the network);
    an uncached id, or a tokenizer path that does not exist, is one error line and writes nothing."""
    from tests.helpers.tiny import tiny_tokenizer
    from ghost_vllm.reference import CALIBRATION_TEXT

    tok_dir = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(str(tok_dir))
    cfg = mamba_ssm_config(d_model=32, n_layer=2, vocab_size=len(tiny_tokenizer()),
                           ssm_cfg={"d_state": 16, "headdim": 8, "chunk_size": 8})
    src = save_random_mamba_ssm_checkpoint(tmp_path / "src", cfg, fmt="bin")
    snap = _fake_hub_cache(tmp_path / "hub", "state-spaces/mamba2-tiny", src)
    tok_snap = _fake_hub_cache(tmp_path / "hub", "tiny-org/tiny-tokenizer", tok_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    base = [sys.executable, "-m", "ghost_vllm.cli", "prune", "--calibration", str(CALIBRATION_TEXT), "--nsamples", "4",
            "--seq-len", "16", "--no-progress", "--allocation", "uniform"]

    def run(model: str, tokenizer: str, out: str):
        return subprocess.run([*base, "--model", model, "--tokenizer", tokenizer, "--out", str(tmp_path / out)],
                              env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)

    ok = run("state-spaces/mamba2-tiny", "tiny-org/tiny-tokenizer", "out")
    assert ok.returncode == 0, ok.stderr[-2000:]
    ghost = json.loads((tmp_path / "out" / "ghost.json").read_text())
    assert ghost["source"]["path"] == str(snap.resolve()) and ghost["state_size"] == 8
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (tok_snap / "tokenizer.json").read_bytes()
    tok_file = str(tok_dir / "tokenizer.json")
    for model, tokenizer, expected, flag in [
        ("state-spaces/not-cached", tok_file, "state-spaces/not-cached: not a local path", "--model"),
        ("state-spaces/mamba2-tiny", "tiny-org/not-cached", "tiny-org/not-cached: not a local path", "--tokenizer"),
        ("state-spaces/mamba2-tiny", str(tmp_path / "none.json"), "none.json: tokenizer not found", "--tokenizer"),
    ]:
        bad = run(model, tokenizer, "out2")
        errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
        assert bad.returncode == 2 and len(errors) == 1 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
        assert expected in errors[0] and flag in errors[0], errors[0]
        assert not (tmp_path / "out2").exists()


def test_codestral_shaped_checkpoint_prunes_per_group_and_equals_zeroed(tmp_path):
    """Codestral-7B's mixer (n_groups 8, d_state 128, headdim 64) scaled to 2 layers × d_model 512, HF layout:
    the CLI's pruned checkpoint equals the dense model with the channels ghost.json removed zeroed, per group."""
    from ghost_vllm.checkpoint import load_model
    from ghost_vllm.mamba.layout import InProjLayout
    from ghost_vllm.reference import CALIBRATION_TEXT, MODEL_DIR
    from ghost_vllm.surgery import zero_channels

    cfg = codestral_like_config()
    hf = hf_config_from_mamba_ssm(cfg)
    assert (hf["n_groups"], hf["state_size"], hf["head_dim"], hf["num_heads"]) == (8, 128, 64, 16)
    dense = convert_mamba_ssm_dir(save_random_mamba_ssm_checkpoint(tmp_path / "ssm", cfg, seed=3), tmp_path / "dense",
                                  tokenizer=str(MODEL_DIR / "tokenizer.json"))
    out = tmp_path / "ghost50"
    assert cli(["prune", "--model", str(dense), "--calibration", str(CALIBRATION_TEXT), "--nsamples", "8",
                "--seq-len", "64", "--out", str(out), "--no-progress", "--allocation", "uniform", "--no-refit"]) == 0
    ghost = json.loads((out / "ghost.json").read_text())
    assert ghost["n_groups"] == 8 and ghost["state_size"] == 64
    kept = [torch.tensor(layer["kept"]) for layer in ghost["layers"]]
    assert all(k.shape == (8, 64) for k in kept)
    assert any(not torch.equal(k[0], k[g]) for k in kept for g in range(1, 8))  # groups choose independently

    zeroed = load_model(dense, "float32")
    layout = InProjLayout.from_config(zeroed.config)
    for layer, k in zip(zeroed.backbone.layers, kept):
        removed = torch.stack([torch.tensor(sorted(set(range(128)) - set(row.tolist()))) for row in k])
        zero_channels(layer.mixer, layout, removed)
    pruned = load_model(out, "float32")
    ids = torch.randint(0, 8000, (2, 300), generator=torch.Generator().manual_seed(0))  # > one 256-token chunk
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, zeroed(ids).logits, atol=2e-5, rtol=0)


def test_real_shaped_130m_prunes_from_the_mamba_ssm_layout(tmp_path):
    """mamba2-130m's exact layout (pytorch_model.bin, no tokenizer, vocab 50277 padded to 50288), pruned by the CLI
    with the shared GPT-NeoX tokenizer: the output is the HF layout with N' = 64 everywhere."""
    from ghost_vllm.reference import CALIBRATION_TEXT

    src = save_random_mamba_ssm_checkpoint(tmp_path / "mamba2-130m", mamba_ssm_config("mamba2-130m"), seed=0)
    out = tmp_path / "mamba2-130m-ghost50"
    assert cli(["prune", "--model", str(src), "--calibration", str(CALIBRATION_TEXT), "--nsamples", "4",
                "--seq-len", "32", "--out", str(out), "--no-progress", "--tokenizer", str(NEOX),
                "--allocation", "uniform", "--no-refit"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["state_size"], cfg["vocab_size"]) == (24, 768, 64, 50288)
    assert (out / "tokenizer.json").is_file() and not (out / "pytorch_model.bin").exists()
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_slice("backbone.layers.23.mixer.in_proj.weight").get_shape() == [2 * 1536 + 2 * 64 + 24, 768]
        assert f.get_slice("backbone.layers.0.mixer.conv1d.weight").get_shape() == [1536 + 2 * 64, 1, 4]


def test_bf16_checkpoint_is_scored_in_float_and_written_in_bf16(tmp_path):
    """bf16 weights (as the released models): the scan and its statistics run in float32/float64, so the scores are
    the fp32 run's up to bf16 activations; the output keeps bf16 and ghost.json sizes the state at 2 B/element."""
    from safetensors import safe_open

    from tests.helpers.tiny import tiny_tokenizer
    from ghost_vllm.reference import CALIBRATION_TEXT

    tok = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(str(tok))
    cfg = mamba_ssm_config(d_model=64, n_layer=2, vocab_size=len(tiny_tokenizer()),
                           ssm_cfg={"d_state": 32, "headdim": 16, "chunk_size": 16})
    src = save_random_mamba_ssm_checkpoint(tmp_path / "src", cfg, seed=4, fmt="bin", dtype=torch.bfloat16)
    runs = {}
    for dtype in ("auto", "float32"):
        out = tmp_path / f"out-{dtype}"
        assert cli(["prune", "--model", str(src), "--calibration", str(CALIBRATION_TEXT), "--nsamples", "8",
                    "--seq-len", "32", "--out", str(out), "--no-progress", "--tokenizer", str(tok / "tokenizer.json"),
                    "--dtype", dtype]) == 0
        runs[dtype] = json.loads((out / "ghost.json").read_text())
    bf, fp = runs["auto"], runs["float32"]
    assert bf["dtype"] == "bfloat16" and fp["dtype"] == "float32"
    assert bf["state_bytes_per_sequence"] * 2 == fp["state_bytes_per_sequence"]
    with safe_open(str(tmp_path / "out-auto" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("backbone.layers.0.mixer.in_proj.weight").dtype == torch.bfloat16
    for lb, lf in zip(bf["layers"], fp["layers"]):
        sb, sf = torch.tensor(lb["scores"]), torch.tensor(lf["scores"])
        assert torch.corrcoef(torch.stack([sb.flatten(), sf.flatten()]))[0, 1] > 0.99


@pytest.mark.parametrize("recipe, dtype, st_dtype", [("mamba2-130m-ghost50.yaml", "float32", "F32"),
                                                     ("mamba2-2.7b-ghost50.yaml", "bfloat16", "BF16")])
def test_shipped_real_model_recipe_runs_on_a_local_checkpoint(recipe, dtype, st_dtype, tmp_path):
    """The real-model recipes as shipped (tokenizer path, dtype, selection, device auto), run from the repository root
    with only the model (a local mamba_ssm-layout checkpoint with mamba2-*'s vocabulary, d_state and head_dim, cut to
    2 layers), the calibration text and its size overridden, as one would without the Hub."""
    from safetensors import safe_open

    from ghost_vllm.reference import CALIBRATION_TEXT

    cfg = mamba_ssm_config("mamba2-130m", d_model=128, n_layer=2)
    src = save_random_mamba_ssm_checkpoint(tmp_path / "src", cfg, seed=3)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "ghost_vllm.cli", "prune", f"configs/{recipe}", "--model", str(src),
                        "--calibration", str(CALIBRATION_TEXT), "--nsamples", "4", "--seq-len", "32", "--out", str(out),
                        "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ghost = json.loads((out / "ghost.json").read_text())
    assert ghost["recipe"]["model"]["tokenizer"] == "../shared/data/tokenizers/gpt-neox-20b.json"
    assert (ghost["method"], ghost["sparsity"], ghost["multiple_of"], ghost["dtype"]) == ("ghost", 0.5, 8, dtype)
    # the default recipe: per-layer N'_l at exactly the uniform cut's channels (64 per layer), and the refit
    sizes = ghost["state_sizes"]
    assert ghost["allocation"] == "adaptive" and sum(sizes) == 64 * len(sizes) and all(n % 8 == 0 for n in sizes)
    assert ghost["state_size"] == max(sizes) == json.loads((out / "config.json").read_text())["state_size"]
    assert ghost["refit"]["target"] == "global" and len(ghost["refit"]["layers"]) == len(sizes)
    assert (out / "tokenizer.json").read_bytes() == NEOX.read_bytes()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_slice("backbone.layers.1.mixer.in_proj.weight").get_dtype() == st_dtype
