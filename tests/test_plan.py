"""`ghost-vllm plan` without an engine: sizes as people write them, vLLM's own state arithmetic (its calculator and
MambaSpec, at several tensor-parallel sizes and dtypes), weight counts against transformers, the --target-seqs
search, measured quality lookup, the serve start-up check, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from ghost_vllm.cli import main as cli
from ghost_vllm.errors import RecipeError
from ghost_vllm.mamba.layout import InProjLayout
from ghost_vllm.planner.arith import block_math
from ghost_vllm.units import parse_size


@pytest.mark.parametrize("text,expected", [
    ("80GiB", 80 * 2**30), ("80GB", 80 * 10**9), ("8e10", 8 * 10**10), ("26100000", 26_100_000),
    ("256MiB", 256 * 2**20), (" 1.5 gib ", 3 * 2**29), ("4096", 4096), ("1e3KB", 10**6),
])
def test_sizes_read_as_people_write_them(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["-1", "0", "eighty", "", "12 parsecs", "0.5", "1e-3", "GiB", "nan", "inf"])
def test_bad_sizes_are_one_line_errors(text):
    with pytest.raises(RecipeError, match="--cache-memory"):
        parse_size(text, "--cache-memory")


def _run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("argv,message", [
    (["plan", "no-such-model", "--cache-memory", "1GiB"], "unknown model"),
    (["plan", "reference", "--cache-memory", "1000", "--sparsity", "0"], "holds no sequence"),
    (["plan", "reference", "--cache-memory", "-1"], "must be at least one byte"),
    (["plan", "reference", "--cache-memory", "0"], "must be at least one byte"),
    (["plan", "reference", "--cache-memory", "eighty"], "not a memory size"),
    (["plan", "reference", "--gpu-memory", "eighty"], "not a memory size"),
    (["plan", "reference", "--cache-memory", "1GiB", "--sparsity", "1.0"], "must be in [0, 1)"),
    (["plan", "reference", "--cache-memory", "1GiB", "--sparsity", "-0.1"], "must be in [0, 1)"),
    (["plan", "reference", "--cache-memory", "1GiB", "--sparsity", "half"], "not a comma-separated list"),
    (["plan", "reference"], "give exactly one of --cache-memory"),
    (["plan", "reference", "--cache-memory", "1GiB", "--gpu-memory", "80GiB"], "give exactly one of --cache-memory"),
    (["plan", "reference", "--cache-memory", "1GiB", "--tensor-parallel-size", "3"], "divisor of the model's num_heads"),
    (["plan", "reference", "--cache-memory", "1GiB", "--target-seqs", "0"], "--target-seqs 0"),
    (["plan", "mamba2-2.7b", "--gpu-memory", "4GiB"], "leaves no cache memory"),
    (["plan", "reference", "--cache-memory", "1GiB", "--dtype", "int4"], "--dtype 'int4'"),
])
def test_bad_input_one_line_exit_2(capsys, argv, message):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("name", ["reference-tiny-g1", "tiny-g2", "mamba2-2.7b", "Mamba-Codestral-7B"])
@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("dtypes", [("bfloat16", "auto"), ("bfloat16", "float32"), ("float32", "float16")])
def test_block_math_is_vllms(name, tp, dtypes):
    """Per-layer pages equal MambaSpec(shapes, dtypes).page_size_bytes with vLLM's own shape and dtype calculators."""
    import torch
    from vllm.model_executor.layers.mamba.mamba_utils import MambaStateDtypeCalculator, MambaStateShapeCalculator
    from vllm.v1.kv_cache_interface import MambaSpec

    from ghost_vllm.mamba.mamba_ssm_format import hf_config_from_mamba_ssm, mamba_ssm_config

    if name.startswith("reference") or name.startswith("tiny"):
        cfg = {"num_hidden_layers": 3, "hidden_size": 64, "num_heads": 8, "head_dim": 16,
               "n_groups": 2 if name == "tiny-g2" else 1, "conv_kernel": 4, "state_size": 128}
    else:
        cfg = hf_config_from_mamba_ssm(mamba_ssm_config(name))
    shape = InProjLayout.from_config(cfg)
    L = int(cfg["num_hidden_layers"])
    sizes = [128, 40, 64][:L] + [96] * max(0, L - 3)
    model_dtype, ssm = dtypes
    ours = block_math(shape, sizes, model_dtype, model_dtype if ssm == "auto" else ssm, tp)
    dt = MambaStateDtypeCalculator.mamba2_state_dtype(getattr(torch, model_dtype), "auto", ssm)
    for layer, n in enumerate(sizes):
        shapes = MambaStateShapeCalculator.mamba2_state_shape(
            tp_world_size=tp, intermediate_size=shape.intermediate_size, n_groups=shape.n_groups,
            num_heads=shape.num_heads, head_dim=shape.head_dim, state_size=n, conv_kernel=shape.conv_kernel)
        spec = MambaSpec(block_size=1024, shapes=shapes, dtypes=dt)
        assert ours.page_bytes[layer] == spec.page_size_bytes, (layer, n)
    assert ours.bytes_per_block == sum(ours.page_bytes)
    padded = block_math(shape, sizes, model_dtype, model_dtype if ssm == "auto" else ssm, tp, padded=True)
    assert padded.bytes_per_block == len(sizes) * max(ours.page_bytes)


@pytest.mark.parametrize("name", ["mamba2-130m", "mamba2-2.7b", "Mamba-Codestral-7B", "tiny-untied-bias"])
def test_weight_count_is_transformers(name):
    import torch
    from transformers import Mamba2Config, Mamba2ForCausalLM

    from ghost_vllm.mamba.mamba_ssm_format import hf_config_from_mamba_ssm, mamba_ssm_config
    from ghost_vllm.planner.models import weight_parameters

    if name.startswith("tiny"):
        cfg = {"vocab_size": 333, "hidden_size": 64, "num_hidden_layers": 2, "state_size": 16, "head_dim": 16,
               "num_heads": 8, "n_groups": 2, "expand": 2, "conv_kernel": 4, "use_bias": True,
               "tie_word_embeddings": False}
    else:
        cfg = hf_config_from_mamba_ssm(mamba_ssm_config(name))
    with torch.device("meta"):
        model = Mamba2ForCausalLM(Mamba2Config(**cfg))
    seen, total = set(), 0
    for p in model.parameters():  # tied weights once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    L = cfg["num_hidden_layers"]
    assert weight_parameters(cfg, (cfg["state_size"],) * L) == total


def test_json_rows_and_target_seqs_is_the_least_sparsity(capsys):
    rc, out, _ = _run(capsys, "plan", "mamba2-2.7b", "--gpu-memory", "80GiB", "--sparsity", "0,0.5,0.75",
                      "--target-seqs", "4096", "--json")
    assert rc == 0
    rows = json.loads(out)
    assert [r["variant"] for r in rows] == ["dense", "GHOST κ=0.5", "GHOST κ=0.75", "target 4,096 seqs"]
    for r in rows:
        assert {"model", "sparsity", "bytes_per_sequence", "num_blocks", "max_num_seqs"} <= set(r)
        assert r["num_blocks"] == r["cache_memory_bytes"] // r["bytes_per_block"]
        assert r["concurrent_sequences"] == r["num_blocks"] - 1 and r["max_num_seqs"] == r["num_blocks"]
        assert r["quality"] is None  # nothing measured for this model
    assert rows[1]["state_sizes"] == [64] * 64 and rows[2]["state_sizes"] == [32] * 64
    target = rows[-1]
    n = target["state_size"]
    assert target["concurrent_sequences"] >= 4096 and target["reachable"]
    # one more channel would not reach it: the search returned the least sparsity
    rc, out, _ = _run(capsys, "plan", "mamba2-2.7b", "--gpu-memory", "80GiB", "--sparsity", str(1 - (n + 1) / 128),
                      "--json")
    (above,) = json.loads(out)
    assert above["state_size"] == n + 1 and above["concurrent_sequences"] < 4096
    # estimate mode: weights at bf16, vocab padded to 64 rows, and the 2 GiB allowance
    from ghost_vllm.mamba.mamba_ssm_format import hf_config_from_mamba_ssm, mamba_ssm_config
    from ghost_vllm.planner.models import weight_parameters

    hf = hf_config_from_mamba_ssm(mamba_ssm_config("mamba2-2.7b"))
    weights = 2 * weight_parameters(hf, (128,) * 64, 64)
    assert rows[0]["cache_memory_bytes"] == int(80 * 2**30 * 0.9) - weights - 2 * 2**30


def test_unreachable_target_is_said(capsys):
    rc, out, _ = _run(capsys, "plan", "reference", "--cache-memory", "64MiB", "--target-seqs", "100000", "--json")
    assert rc == 0
    rows = json.loads(out)
    assert rows[-1] == {"model": "reference", "variant": "target 100,000 seqs", "target_seqs": 100000,
                        "reachable": False}
    rc, out, _ = _run(capsys, "plan", "reference", "--cache-memory", "64MiB", "--target-seqs", "100000")
    assert "not reachable by pruning alone" in out


def test_measured_quality_is_shown_never_invented(capsys, tmp_path):
    from ghost_vllm.checkpoint import source_hash
    from ghost_vllm.reference import MODEL_DIR

    points = [json.loads(x) for x in open("benchmarks/results/fidelity/points.jsonl")]
    dense = next(p for p in points if p["method"] == "dense")["wt2_512_token_ppl"]
    ghost50 = next(p for p in points if p["method"] == "ghost" and p["state_size"] == 64)["wt2_512_token_ppl"]
    rc, out, _ = _run(capsys, "plan", "reference", "--cache-memory", "26100000", "--dtype", "float32", "--json")
    rows = {r["variant"]: r for r in json.loads(out)}
    assert rows["dense"]["quality"]["value"] == pytest.approx(dense)
    assert rows["GHOST κ=0.5"]["quality"]["value"] == pytest.approx(ghost50)
    assert rows["GHOST κ=0.5"]["quality"]["increase_pct"] == pytest.approx(100 * (ghost50 / dense - 1))
    recipes = [json.loads(x) for x in open("benchmarks/results/recipes/points.jsonl")]
    ghost25 = next(p for p in recipes if p["variant"] == "uniform" and p["sparsity"] == 0.25)["wt2_ppl"]
    assert rows["GHOST κ=0.25"]["quality"]["value"] == pytest.approx(ghost25)  # uniform N' 96: the recipes benchmark
    rc, out, _ = _run(capsys, "plan", "reference", "--cache-memory", "26100000", "--sparsity", "0.375,0.5", "--json")
    assert {r["variant"]: r for r in json.loads(out)}["GHOST κ=0.375"]["quality"] is None  # N' 80: never measured
    rc, out, _ = _run(capsys, "plan", "reference", "--cache-memory", "26100000", "--sparsity", "0.375,0.5")
    assert "not measured" in out and f"{ghost50:.2f}" in out
    # a per-layer checkpoint of the reference model: matched by method and exact sizes (budgets benchmark)
    budgets = [json.loads(x) for x in open("benchmarks/results/budgets/points.jsonl")]
    adaptive = next(p for p in budgets if p["variant"] == "adaptive" and p["sparsity"] == 0.5)
    ckpt = tmp_path / "ref-adaptive"
    ckpt.mkdir()
    cfg = json.loads((MODEL_DIR / "config.json").read_text())
    sizes = adaptive["state_sizes"]
    (ckpt / "config.json").write_text(json.dumps({**cfg, "state_size": max(sizes), "layer_state_sizes": sizes,
                                                  "architectures": ["GhostMamba2ForCausalLM"]}))
    ghost = {"method": "ghost", "allocation": "adaptive", "state_size_original": 128,
             "source": {"path": "elsewhere", "sha256": source_hash(MODEL_DIR)},
             "calibration": {"source": "reference", "nsamples": 128, "seq_len": 128, "seed": 0, "tokens": 16384}}
    (ckpt / "ghost.json").write_text(json.dumps(ghost))
    rc, out, _ = _run(capsys, "plan", str(ckpt), "--cache-memory", "26100000", "--json")
    (row,) = json.loads(out)
    assert row["state_sizes"] == sizes and row["quality"]["value"] == pytest.approx(adaptive["wt2_512_token_ppl"])
    # the same method and sizes calibrated on other data: another model, no figure
    (ckpt / "ghost.json").write_text(json.dumps({**ghost, "calibration": {**ghost["calibration"], "seq_len": 64}}))
    rc, out, _ = _run(capsys, "plan", str(ckpt), "--cache-memory", "26100000", "--json")
    assert json.loads(out)[0]["quality"] is None
    # the same checkpoint pruned from another model: no figure
    (ckpt / "ghost.json").write_text(json.dumps({**ghost, "source": {"sha256": "0" * 64}}))
    rc, out, _ = _run(capsys, "plan", str(ckpt), "--cache-memory", "26100000", "--json")
    assert json.loads(out)[0]["quality"] is None
    # what-ifs only for dense models
    rc, _, err = _run(capsys, "plan", str(ckpt), "--cache-memory", "26100000", "--sparsity", "0.5")
    assert rc == 2 and "already pruned" in err


def test_stock_padding_prices_the_largest_page(capsys, tmp_path):
    from ghost_vllm.reference import MODEL_DIR

    ckpt = tmp_path / "layers"
    ckpt.mkdir()
    cfg = json.loads((MODEL_DIR / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "state_size": 120, "layer_state_sizes": [120, 48, 72, 64, 40, 40]}))
    rows = {}
    for flag in ((), ("--stock-padding",)):
        rc, out, _ = _run(capsys, "plan", str(ckpt), "--cache-memory", "26100000", "--dtype", "float32", "--json", *flag)
        rows[bool(flag)] = json.loads(out)[0]
    assert rows[False]["bytes_per_block"] == 832_512  # Σ_l pages, as `ghost-vllm inspect` reports
    assert rows[True]["bytes_per_block"] == 6 * 254_784  # every layer padded to layer 0's page (N 120)


# --- serve: the same arithmetic before the engine starts ----------------------------------------------------------

def test_serve_chooses_a_cpu_cache_size_and_checks_max_num_seqs():
    from ghost_vllm.commands.serve import plan_serve
    from ghost_vllm.reference import MODEL_DIR

    GiB = 2**30
    p = plan_serve(MODEL_DIR, ["--port", "8000", "--dtype", "float32"], on_cpu=True, available_memory=10 * GiB, env={})
    assert p.extra[-2:] == ["--kv-cache-memory-bytes", str(int(2.5 * GiB))]
    blocks = int(2.5 * GiB) // 1_628_160
    assert len(p.lines) == 1 and f"holds {blocks - 1:,} concurrent sequences" in p.lines[0]
    # capped at 4 GiB; the legacy env var counts as a size
    assert plan_serve(MODEL_DIR, [], True, 100 * GiB, env={}).extra == ["--kv-cache-memory-bytes", str(4 * GiB)]
    assert plan_serve(MODEL_DIR, [], True, 100 * GiB, env={"VLLM_CPU_KVCACHE_SPACE": "1"}).extra == []
    # vLLM's CPU default max_num_seqs (128) vs 16 blocks: said; --auto-max-num-seqs passes the blocks
    small = ["--dtype", "float32", "--kv-cache-memory-bytes", str(16 * 1_628_160)]
    p = plan_serve(MODEL_DIR, small, True, 10 * GiB, env={})
    assert p.extra == small and len(p.lines) == 1
    assert "default max_num_seqs 128 exceeds the 16 Mamba cache blocks" in p.lines[0]
    p = plan_serve(MODEL_DIR, [*small, "--max-num-seqs", "64", "--auto-max-num-seqs"], True, 10 * GiB, env={})
    assert p.extra == [*small, "--max-num-seqs", "16"] and "--max-num-seqs 64 exceeds" in p.lines[0]
    p = plan_serve(MODEL_DIR, [*small, "--max-num-seqs=8"], True, 10 * GiB, env={})
    assert p.lines == []
    # GPU, vLLM's default on an 80 GB H100 is 1024 (the vllm#49064 report): with full CUDA graphs vLLM would refuse
    # after loading the weights, so an exact cache size makes it an error; --enforce-eager keeps it a note
    gpu = ["--kv-cache-memory-bytes", str(969 * 814_080)]
    with pytest.raises(Exception, match="default max_num_seqs 1024 exceeds the 969 Mamba cache blocks"):
        plan_serve(MODEL_DIR, gpu, False, 0, 80 * 10**9, "NVIDIA H100", env={})
    p = plan_serve(MODEL_DIR, [*gpu, "--enforce-eager"], False, 0, 80 * 10**9, "NVIDIA H100", env={})
    assert "default max_num_seqs 1024 exceeds the 969 Mamba cache blocks" in p.lines[0]
    with pytest.raises(Exception, match="holds no sequence"):
        plan_serve(MODEL_DIR, ["--dtype", "float32", "--kv-cache-memory-bytes", "3000000"], True, 10 * GiB, env={})


def test_serve_check_skips_non_mamba_models(tmp_path):
    from ghost_vllm.commands.serve import plan_serve

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    p = plan_serve(tmp_path, ["--max-num-seqs", "4096"], True, 8 * 2**30, env={})
    assert p.extra == ["--max-num-seqs", "4096", "--kv-cache-memory-bytes", str(2 * 2**30)]
    assert len(p.lines) == 1 and "holds" not in p.lines[0]


def test_cpu_default_cache_patch_decision():
    """The patch's decision on a real vLLM CacheConfig: inert when a size is given or the default fits."""
    from types import SimpleNamespace

    from vllm.config import CacheConfig

    from ghost_vllm_patches.cpu_default_cache import choose_cache_size

    GiB = 2**30

    def cfg(**kw):
        return SimpleNamespace(cache_config=CacheConfig(**kw), model_config=None)

    given = cfg(kv_cache_memory_bytes=GiB)
    assert choose_cache_size(given, (24 * GiB, 10 * GiB)) is None and given.cache_config.kv_cache_memory_bytes == GiB
    fits = cfg(gpu_memory_utilization=0.3)
    assert choose_cache_size(fits, (24 * GiB, 20 * GiB)) is None and fits.cache_config.kv_cache_memory_bytes is None
    dies = cfg()  # 0.92 × 24 GiB > 10 GiB available: stock vLLM fails to start
    assert choose_cache_size(dies, (24 * GiB, 10 * GiB)) == int(2.5 * GiB)
    assert dies.cache_config.kv_cache_memory_bytes == int(2.5 * GiB)


def test_recall_model_plan_shows_measured_recall_beside_capacity(capsys):
    """The recall model's what-ifs carry the recall accuracy the recall benchmark measured (issue: recall cost
    next to the capacity), matched by method and sizes; unmeasured sizes say so."""
    points = [json.loads(x) for x in open("benchmarks/results/recall/points.jsonl")]
    dense = next(p for p in points if p["method"] == "dense" and p["format"] == "float32")["accuracy"]
    ghost50 = next(p for p in points if p["name"] == "ghost" and p["sparsity"] == 0.5)
    rc, out, _ = _run(capsys, "plan", "recall", "--cache-memory", "64MiB", "--dtype", "float32",
                      "--sparsity", "0,0.5,0.6", "--json")
    rows = {r["variant"]: r for r in json.loads(out)}
    assert rows["dense"]["quality"]["value"] == pytest.approx(dense)
    assert "MQAR" in rows["dense"]["quality"]["metric"]
    assert rows["GHOST κ=0.5"]["state_sizes"] == ghost50["state_sizes"]
    assert rows["GHOST κ=0.5"]["quality"]["value"] == pytest.approx(ghost50["accuracy"])
    assert rows["GHOST κ=0.6"]["quality"] is None
    rc, out, _ = _run(capsys, "plan", "recall", "--cache-memory", "64MiB", "--dtype", "float32", "--sparsity", "0.5")
    assert f"recall {ghost50['accuracy']:.3f}" in out and "pts" in out


def test_plan_prices_hybrids_with_vllms_hybrid_pages(capsys):
    """`ghost-vllm plan` takes a hybrid (the bundled Nemotron-H-shaped one): its rows are planner.hybrid's layout —
    page alignment, groups, attention KV at --max-model-len — and it refuses what that arithmetic does not model."""
    from ghost_vllm.cli import main as cli
    from ghost_vllm.planner.hybrid import hybrid_bytes, sequences_in
    from ghost_vllm.sources import bundled_model_dir

    memory = 64 * 2**20
    assert cli(["plan", "hybrid", "--cache-memory", "64MiB", "--max-model-len", "8192", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["state_size"] for r in rows] == [128, 96, 64, 32]
    cfg = json.loads((bundled_model_dir("hybrid") / "config.json").read_text())
    for r in rows:
        per = hybrid_bytes(cfg, 8192, dtype="bfloat16", state_size=r["state_size"], mamba_cache_mode="align")
        assert r["num_blocks"] == memory // per.layout.bytes_per_block
        assert r["concurrent_sequences"] == sequences_in(memory, per)
        assert r["blocks_per_sequence"] == per.blocks and r["context_tokens"] == 8192
    assert rows[2]["concurrent_sequences"] > rows[0]["concurrent_sequences"]
    for bad, msg in ((["--gpu-memory", "80GiB"], "exact mode only"),
                     (["--cache-memory", "64MiB", "--tensor-parallel-size", "2"], "--tensor-parallel-size 1"),
                     (["--cache-memory", "100KiB"], "holds no sequence of 4,096 tokens")):
        assert cli(["plan", "hybrid", *bad]) == 2
        assert msg in capsys.readouterr().err
