"""One table per fact: a state dtype is one row of ``ghost_vllm.units.STATE_DTYPE_TABLE``. Adding an fp8 row at run
time (no mixer) makes ``plan --state-dtype``, ``inspect``, the recipe's ``output.state_dtype`` and ``eval``'s
simulation take it, priced by exact arithmetic; the plugin refuses to serve it (no mixer), in one line."""

from __future__ import annotations

import json
import shutil

import pytest

from ghost_vllm import units
from ghost_vllm.cli import main as cli
from ghost_vllm.units import STATE_DTYPE_TABLE, StateDtype

FP8 = StateDtype("fp8_e4m3", 1, "float8_e4m3fn", scale_bytes_per_head=4, max_value=448.0)


@pytest.fixture
def fp8_row():
    STATE_DTYPE_TABLE[FP8.name] = FP8
    try:
        yield FP8
    finally:
        del STATE_DTYPE_TABLE[FP8.name]


def test_the_table_is_what_every_reader_sees():
    assert dict(units.DTYPE_BYTES) == {"float32": 4, "bfloat16": 2, "float16": 2}
    assert units.plugin_state_dtypes() == ("int8",)
    assert units.ssm_state_bytes(1000, 5, "int8") == 1000 + 5 * 4
    assert units.ssm_state_bytes(1000, 5, "bfloat16") == 2000
    with pytest.raises(units.RecipeError, match="use one of float32, bfloat16, float16, int8"):
        units.ssm_state_bytes(1, 1, "fp4")


def test_an_added_row_is_priced_everywhere(fp8_row, tiny_dirs, tmp_path, capsys):
    from ghost_vllm.errors import CheckpointError
    from ghost_vllm.inspection import inspect_checkpoint
    from ghost_vllm.loadtest.state_formats import state_format
    from ghost_vllm.plugin.validate import validate_ghost_checkpoint
    from ghost_vllm.recipe import build_recipe

    assert "fp8_e4m3" in units.plugin_state_dtypes() and "fp8_e4m3" not in units.DTYPE_BYTES
    # a pruned tiny checkpoint asking for the new state dtype (config key + ghost.json, as prune --state-dtype writes)
    src, ckpt = tiny_dirs[1], tmp_path / "fp8"
    assert cli(["prune", "--model", str(src), "--nsamples", "4", "--seq-len", "16", "--sparsity", "0.5",
                "--allocation", "uniform", "--no-refit", "--out", str(ckpt), "--no-progress",
                "--state-dtype", "fp8_e4m3"]) == 0
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["ghost_state_dtype"] == "fp8_e4m3"
    # exact bytes: 2 layers, conv (K-1)·(I + 2·G·N') float32, SSM H·P·N' at 1 byte + a 4-byte scale per head
    H, P, G, K, I = cfg["num_heads"], cfg["head_dim"], cfg["n_groups"], cfg["conv_kernel"], cfg["num_heads"] * cfg["head_dim"]
    n = cfg["state_size"]
    want = 2 * ((K - 1) * (I + 2 * G * n) * 4 + H * P * n * 1 + H * 4)
    info = inspect_checkpoint(ckpt)
    assert info["ssm_dtype"] == "fp8_e4m3" and info["bytes_per_sequence"] == want
    assert json.loads((ckpt / "ghost.json").read_text())["state_bytes_per_sequence"] == want
    capsys.readouterr()
    assert cli(["plan", str(ckpt), "--cache-memory", "1MiB", "--dtype", "float32", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["ssm_dtype"] == "fp8_e4m3" and row["bytes_per_sequence"] == want
    assert row["num_blocks"] == 2**20 // row["bytes_per_block"]
    # the flag on a dense model: the same arithmetic at N
    assert cli(["plan", str(src), "--cache-memory", "1MiB", "--dtype", "float32", "--state-dtype", "fp8_e4m3",
                "--json"]) == 0
    dense = json.loads(capsys.readouterr().out)[0]
    assert dense["ssm_dtype"] == "fp8_e4m3"
    N = json.loads((src / "config.json").read_text())["state_size"]
    assert dense["bytes_per_sequence"] == 2 * ((K - 1) * (I + 2 * G * N) * 4 + H * P * N + H * 4)
    # the recipe takes it; eval simulates it (a scaled fp8 cast per head)
    assert build_recipe({"model": {"path": str(src)}, "output": {"dir": str(tmp_path / "r"), "state_dtype": "fp8_e4m3"}}).output.state_dtype == "fp8_e4m3"
    fmt = state_format("fp8_e4m3")
    assert (fmt.element_bytes, fmt.scale_bytes_per_head, fmt.max_value) == (1, 4, 448.0)
    # the plugin has no mixer for it: refused before vLLM allocates
    with pytest.raises(CheckpointError, match="fp8_e4m3 has no plugin mixer"):
        validate_ghost_checkpoint(ckpt)
    shutil.rmtree(ckpt)


def test_without_the_row_the_same_requests_fail(tiny_dirs, capsys):
    assert cli(["plan", str(tiny_dirs[1]), "--cache-memory", "1MiB", "--state-dtype", "fp8_e4m3"]) == 2
    assert "fp8_e4m3" in capsys.readouterr().err
