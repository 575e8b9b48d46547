"""The int8 SSM-state format without an engine: the quantizer against hand-computed codes, the exact byte arithmetic
(int8 element + one float32 scale per head), the checkpoint key written by prune and read by inspect/plan/serve/eval,
and every bad input refused in one line (exit 2). The engine side: tests/test_int8_vllm.py; the Triton kernels:
tests/test_int8_kernels.py."""

from __future__ import annotations

import json

import pytest
import torch

from ghost_vllm.cli import main as cli
from ghost_vllm.errors import ModelError, RecipeError
from ghost_vllm.mamba.int8_state import dequantize, quantize
from ghost_vllm.reference import HYBRID_MODEL_DIR, MODEL_DIR


def test_quantize_by_hand():
    h = torch.tensor([[[1.0, -2.0], [0.5, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])  # [H=2, P=2, N=2]
    q, s = quantize(h)
    # head 0: amax 2 → ×63.5: 63.5 → 64 (half to even), −127, 31.75 → 32, 0; head 1 all zero: codes 0, scale 0
    assert q.dtype == torch.int8 and q.tolist() == [[[64, -127], [32, 0]], [[0, 0], [0, 0]]]
    assert s.tolist() == [pytest.approx(2 / 127), 0.0]
    assert torch.allclose(dequantize(q, s), torch.tensor([[[64, -127], [32, 0]], [[0, 0], [0, 0]]]) * s[:, None, None])
    q, s = quantize(h, "row")  # per (head, row): row [0.5, 0] → ×254 → 127, 0
    assert q[0].tolist() == [[64, -127], [127, 0]] and s.shape == (2, 2)
    with pytest.raises(ValueError, match="granularity"):
        quantize(h, "tensor")


def test_round_trip_error_is_at_most_half_a_quantum_and_stochastic_rounding_is_unbiased():
    h = torch.randn(3, 4, 8, 16, generator=torch.Generator().manual_seed(0))
    q, s = quantize(h)
    assert float(((dequantize(q, s) - h).abs() / s[..., None, None]).max()) <= 0.5 + 1e-5
    g = torch.Generator().manual_seed(1)
    x = torch.full((1, 1, 1, 4000), 0.3)
    x[..., 0] = 1.0  # amax 1 → 0.3 × 127 = 38.1: codes 38 or 39, mean 38.1
    q, s = quantize(x, generator=g)
    assert set(q[..., 1:].unique().tolist()) == {38, 39}
    assert abs(float(q[..., 1:].float().mean()) - 38.1) < 0.05


def test_bytes_count_int8_elements_and_a_scale_per_head():
    from ghost_vllm.mamba.layout import InProjLayout
    from ghost_vllm.planner.arith import block_math
    from ghost_vllm.state import state_size_of

    cfg = json.loads((MODEL_DIR / "config.json").read_text())  # 6 layers, 8 heads × 64, N 128, conv 4, I 512
    s = state_size_of(cfg, dtype="float32", ssm_dtype="int8", state_sizes=[120, 48, 72, 64, 40, 40])
    conv = sum(3 * (512 + 2 * n) * 4 for n in (120, 48, 72, 64, 40, 40))
    assert s.ssm_bytes == 8 * 64 * 384 + 6 * 8 * 4 and s.conv_bytes == conv and s.bytes_per_sequence == 242_880
    assert s.layer_bytes[0] == 3 * (512 + 240) * 4 + 8 * 64 * 120 + 32
    bm = block_math(InProjLayout.from_config(cfg), [64] * 6, "float32", "int8", tp=2)  # 4 heads per rank
    assert bm.ssm_bytes == (4 * 64 * 64 + 4 * 4,) * 6
    with pytest.raises(RecipeError, match="SSM state dtype 'fp8'"):
        block_math(InProjLayout.from_config(cfg), [64] * 6, "float32", "fp8")


def test_config_key_is_checked():
    from ghost_vllm.ghost_format import config_state_dtype

    assert config_state_dtype({}) is None and config_state_dtype({"ghost_state_dtype": "int8"}) == "int8"
    with pytest.raises(ModelError, match="ghost_state_dtype 'fp8'.*remove the key"):
        config_state_dtype({"ghost_state_dtype": "fp8"})


def _prune(src, out, calib, *extra):
    return cli(["prune", "--model", str(src), "--calibration", str(calib), "--nsamples", "8", "--seq-len", "32",
                "--sparsity", "0.5", "--out", str(out), "--no-progress", *extra])


def test_prune_writes_the_int8_state_and_every_reader_prices_it(tiny_dirs, calib_text, tmp_path, capsys):
    from ghost_vllm.inspection import inspect_checkpoint
    from ghost_vllm.plugin.validate import validate_ghost_checkpoint

    out = tmp_path / "int8"
    assert _prune(tiny_dirs[2], out, calib_text, "--state-dtype", "int8") == 0
    cfg = json.loads((out / "config.json").read_text())
    ghost = json.loads((out / "ghost.json").read_text())
    assert cfg["ghost_state_dtype"] == "int8" and ghost["state_dtype"] == "int8"
    assert ghost["recipe"]["output"]["state_dtype"] == "int8"
    heads, P, sizes = cfg["num_heads"], cfg["head_dim"], ghost["state_sizes"]
    conv = sum((cfg["conv_kernel"] - 1) * (heads * P + 2 * cfg["n_groups"] * n) * 4 for n in sizes)
    want = conv + sum(heads * P * n + heads * 4 for n in sizes)
    assert ghost["state_bytes_per_sequence"] == want
    info = inspect_checkpoint(out)
    assert info["ssm_dtype"] == "int8" and info["bytes_per_sequence"] == want
    assert validate_ghost_checkpoint(out)["bytes_per_sequence"] == want
    capsys.readouterr()
    assert cli(["plan", str(out), "--cache-memory", "1000000", "--dtype", "float32", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["ssm_dtype"] == "int8" and row["bytes_per_sequence"] == want and row["num_blocks"] == 1_000_000 // want
    assert row["quality"] is None  # the measured figures are for a float32 state
    # config.json and ghost.json must agree
    cfg.pop("ghost_state_dtype")
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="state dtype int8 but config.json says None"):
        validate_ghost_checkpoint(out)


@pytest.mark.parametrize("argv,message", [
    (["--state-dtype", "fp8"], "output.state_dtype: 'fp8'"),
    (["--model", str(HYBRID_MODEL_DIR), "--state-dtype", "int8"], "pure Mamba2 models only, not nemotron_h"),
])
def test_prune_refuses_a_state_dtype_it_cannot_serve(calib_text, tmp_path, capsys, argv, message):
    args = ["prune", "--model", str(MODEL_DIR), "--calibration", str(calib_text), "--out", str(tmp_path / "x"),
            "--no-progress", *argv]
    assert cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv,message", [
    (["plan", str(MODEL_DIR), "--cache-memory", "1MiB", "--state-dtype", "fp8"], "--state-dtype 'fp8'"),
    (["plan", str(MODEL_DIR), "--cache-memory", "1MiB", "--state-dtype", "int8", "--mamba-ssm-cache-dtype",
      "float32"], "give one of them"),
    (["plan", str(HYBRID_MODEL_DIR), "--cache-memory", "64MiB", "--state-dtype", "int8"], "pure Mamba2 models only"),
    (["eval", str(HYBRID_MODEL_DIR), "--state-dtype", "int8", "--data", "reference-valid"], "not nemotron_h"),
    (["eval", str(MODEL_DIR), "--state-dtype", "int4", "--data", "reference-valid"], "--state-dtype 'int4'"),
])
def test_commands_refuse_bad_state_dtypes(capsys, argv, message):
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_serve_passes_the_int8_state_as_hf_overrides():
    from ghost_vllm.commands.serve import plan_serve

    p = plan_serve(MODEL_DIR, ["--kv-cache-memory-bytes", "64MiB", "--hf-overrides", '{"a": 1}', "--state-dtype",
                               "int8", "--dtype", "float32", "--max-num-seqs", "1000"], on_cpu=True, env={})
    assert "--state-dtype" not in p.extra
    overrides = json.loads(p.extra[p.extra.index("--hf-overrides") + 1])
    assert overrides == {"a": 1, "ghost_state_dtype": "int8", "architectures": ["GhostMamba2ForCausalLM"]}
    # the dense reference at int8: 6 × (3·768·4 + 8·64·128 + 32) B per sequence → 149 blocks in 64 MiB (the engine's)
    assert 64 * 2**20 // (6 * (3 * 768 * 4 + 8 * 64 * 128 + 32)) == 149
    assert any("exceeds the 149 Mamba cache blocks" in line for line in p.lines), p.lines
    with pytest.raises(RecipeError, match="--state-dtype 'fp8'"):
        plan_serve(MODEL_DIR, ["--state-dtype", "fp8"], on_cpu=True, env={})


@pytest.mark.parametrize("choices,message", [
    ({"mamba_backend": "flashinfer"}, "--mamba-backend flashinfer"),
    ({"mamba_ssm_cache_dtype": "bfloat16"}, "--mamba-ssm-cache-dtype bfloat16"),
    ({"prefix_caching": True}, "--enable-prefix-caching"),
])
def test_preflight_refuses_what_the_int8_state_cannot_run_with(choices, message):
    from ghost_vllm.plugin.preflight import ServeChoices, preflight

    cfg = json.loads((MODEL_DIR / "config.json").read_text())
    preflight(cfg, [128] * 6, ServeChoices(state_dtype="int8"))  # fine as it is
    with pytest.raises(RecipeError, match=message):
        preflight(cfg, [128] * 6, ServeChoices(state_dtype="int8", **choices))
    hybrid = json.loads((HYBRID_MODEL_DIR / "config.json").read_text())
    with pytest.raises(RecipeError, match="pure Mamba2 models only"):
        preflight(hybrid, [hybrid["ssm_state_size"]], ServeChoices(state_dtype="int8"))


def test_eval_scores_through_the_int8_state(tiny_dirs, calib_text, tmp_path):
    args = ["eval", str(tiny_dirs[1]), "--data", str(calib_text), "--seq-len", "64", "--max-tokens", "256",
            "--no-progress"]
    reports = {}
    for dt in ("float32", "int8"):
        assert cli([*args, "--state-dtype", dt, "--json", str(tmp_path / f"{dt}.json")]) == 0
        reports[dt] = json.loads((tmp_path / f"{dt}.json").read_text())
    assert reports["int8"]["state_dtype"] == "int8"
    a, b = reports["float32"]["perplexity"][0]["token_ppl"], reports["int8"]["perplexity"][0]["token_ppl"]
    assert a != b and abs(b / a - 1) < 0.05


def test_compare_scores_an_int8_checkpoint_through_its_state(tiny_dirs, calib_text, tmp_path):
    from ghost_vllm.commands.compare import compare_models

    plain, int8 = tmp_path / "plain", tmp_path / "int8"
    assert _prune(tiny_dirs[1], plain, calib_text) == 0
    assert _prune(tiny_dirs[1], int8, calib_text, "--state-dtype", "int8") == 0
    rows = compare_models([str(plain), str(int8)], [str(calib_text)], seq_len=64, max_tokens=256, progress=False)
    a, b = (r["perplexity"][0]["token_ppl"] for r in rows)
    assert a != b and abs(b / a - 1) < 0.05  # the same weights; only the stored state differs
    assert rows[1]["inspect"]["bytes_per_sequence"] < rows[0]["inspect"]["bytes_per_sequence"]
    assert cli(["eval", str(int8), "--data", str(calib_text), "--seq-len", "64", "--max-tokens", "256",
                "--no-progress", "--json", str(tmp_path / "e.json")]) == 0  # auto: the checkpoint's int8
    assert json.loads((tmp_path / "e.json").read_text())["perplexity"][0]["token_ppl"] == pytest.approx(b, rel=1e-9)
