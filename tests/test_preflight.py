"""Serve-time choices a pruned checkpoint cannot run with are refused before anything starts, in one line (exit 2):
TP sizes vLLM cannot shard the Mamba heads/groups over, FlashInfer's state update at sizes it cannot build, more
max_num_seqs than Mamba blocks with full CUDA graphs; and the CPU thread binding `ghost-vllm serve` sets for TP."""

from __future__ import annotations


import pytest

from ghost_vllm.cli import main as cli
from ghost_vllm.commands.serve import cpu_thread_binding, plan_serve
from ghost_vllm.errors import RecipeError
from ghost_vllm.plugin.preflight import ServeChoices, flashinfer_ssu_problem, preflight, tensor_parallel_sizes


def _cfg(**kw) -> dict:
    from tests.helpers.tiny import tiny_config

    return {**tiny_config(**kw).to_dict(), "model_type": "mamba2"}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from tests.helpers.tiny import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("preflight")
    save_tiny_checkpoint(root / "g2", seed=1, n_groups=2)  # 8 heads × head_dim 8, state 16
    return root


@pytest.mark.parametrize("tp, message", [
    (3, "--tensor-parallel-size 3: does not divide the model's 8 Mamba heads"),
    (4, "--tensor-parallel-size 4: neither divides the model's n_groups 2 nor can replicate it"),
    (0, "--tensor-parallel-size 0: must be a positive integer"),
])
def test_tp_sizes_vllm_cannot_shard_are_refused(tiny_dirs, capsys, tp, message):
    assert cli(["serve", str(tiny_dirs / "g2"), "--tensor-parallel-size", str(tp)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    if tp == 4:
        assert err.endswith("use one of 1, 2")


def test_tp_sizes_follow_vllms_group_rule():
    assert tensor_parallel_sizes(_cfg(n_groups=1), up_to=8) == [1, 2, 4, 8]  # n_groups 1 is replicated
    assert tensor_parallel_sizes(_cfg(n_groups=2), up_to=8) == [1, 2]
    assert tensor_parallel_sizes(_cfg(n_groups=8), up_to=8) == [1, 2, 4, 8]


def test_pipeline_stages_need_layers(tiny_dirs, capsys):
    assert cli(["serve", str(tiny_dirs / "g2"), "--pipeline-parallel-size", "3"]) == 2
    assert "--pipeline-parallel-size 3: must be between 1 and the model's 2 decoder layers" in capsys.readouterr().err


@pytest.mark.parametrize("n, head_dim, ratio, nbytes, ok", [
    (128, 64, 1, 2, True), (64, 64, 1, 2, True), (96, 64, 1, 2, True), (256, 64, 1, 2, True),
    (48, 64, 1, 2, False), (32, 64, 1, 2, False), (40, 64, 1, 2, False), (120, 64, 1, 2, False),
    (48, 64, 1, 4, True), (32, 64, 1, 4, True), (16, 64, 1, 4, False), (40, 64, 1, 4, False),
    (64, 32, 1, 2, False), (64, 128, 1, 2, True), (64, 64, 80, 2, False), (64, 64, 64, 2, True),
    (64, 64, 3, 2, False),
])
def test_flashinfer_state_update_rule(n, head_dim, ratio, nbytes, ok):
    assert (flashinfer_ssu_problem(n, head_dim, ratio, nbytes) == "") is ok


def test_flashinfer_with_a_per_layer_checkpoint_is_refused_in_one_line():
    cfg = {**_cfg(head_dim=64, hidden_size=256, state_size=128), "num_hidden_layers": 3}
    with pytest.raises(RecipeError, match=r"--mamba-backend flashinfer: FlashInfer's state update cannot be built "
                                          r"for d_state 40 \(with a 16-bit state .* serve with --mamba-backend triton"):
        preflight(cfg, [120, 64, 40], ServeChoices(mamba_backend="flashinfer"))
    preflight(cfg, [64, 64, 64], ServeChoices(mamba_backend="flashinfer"))  # uniform 64: builds
    preflight(cfg, [120, 64, 40], ServeChoices(mamba_backend="triton"))  # Triton masks any d_state
    with pytest.raises(RecipeError, match="d_state 40"):  # float32 state: multiples of 16 from 32
        preflight(cfg, [48, 40], ServeChoices(mamba_backend="flashinfer", ssm_state_bytes=4))
    preflight(cfg, [48, 32], ServeChoices(mamba_backend="flashinfer", ssm_state_bytes=4))


def test_flashinfer_rule_sees_a_projected_state_at_its_ranks():
    # balanced truncation: in_proj/conv stay N = 128 wide, the kernels' d_state is the rank r_l
    cfg = {**_cfg(head_dim=64, hidden_size=256, state_size=128), "num_hidden_layers": 3,
           "ghost_state_ranks": [64, 40, 64]}
    with pytest.raises(RecipeError, match=r"d_state 40"):
        preflight(cfg, [128, 128, 128], ServeChoices(mamba_backend="flashinfer"))
    preflight({**cfg, "ghost_state_ranks": [64, 64, 64]}, [128, 128, 128], ServeChoices(mamba_backend="flashinfer"))


def test_flashinfer_refused_through_serve(tiny_dirs, capsys):
    assert cli(["serve", str(tiny_dirs / "g2"), "--mamba-backend", "flashinfer"]) == 2
    err = capsys.readouterr().err
    assert "d_state 16" in err and "--mamba-backend triton" in err


def test_cpu_thread_binding():
    assert cpu_thread_binding(2, [0, 1]) == "0|1"
    assert cpu_thread_binding(2, [0, 1, 2, 3]) == "0-1|2-3"
    assert cpu_thread_binding(1, [4, 5]) == "4-5"
    with pytest.raises(RecipeError, match="4 CPU workers need at least 4 cores"):
        cpu_thread_binding(4, [0, 1])


def test_cuda_graph_blocks_check_refuses_on_gpu_with_an_exact_cache_size():
    from ghost_vllm.reference import MODEL_DIR

    small = ["--kv-cache-memory-bytes", "8MiB", "--max-num-seqs", "64"]
    with pytest.raises(RecipeError, match=r"--max-num-seqs 64 exceeds the \d+ Mamba cache blocks .* full CUDA graphs"):
        plan_serve(MODEL_DIR, small, on_cpu=False, device_memory=80 * 2**30, device_name="H100")
    eager = plan_serve(MODEL_DIR, [*small, "--enforce-eager"], on_cpu=False, device_memory=80 * 2**30)
    assert any("exceeds" in line for line in eager.lines)
    auto = plan_serve(MODEL_DIR, [*small, "--auto-max-num-seqs"], on_cpu=False, device_memory=80 * 2**30)
    blocks = int(auto.extra[auto.extra.index("--max-num-seqs") + 1])
    assert 1 < blocks < 64
    assert auto.extra[auto.extra.index("--kv-cache-memory-bytes") + 1] == str(8 * 2**20)  # vLLM takes integers


def test_per_rank_state_arithmetic_matches_the_planner():
    from ghost_vllm.mamba.layout import InProjLayout
    from ghost_vllm.planner.arith import block_math
    from ghost_vllm.state import state_size_of

    cfg = _cfg(n_groups=2, hidden_size=64, head_dim=8)  # 16 heads
    for tp in (1, 2, 4):
        if tp == 4:
            cfg = _cfg(n_groups=1, hidden_size=64, head_dim=8)
        ours = state_size_of(cfg, state_sizes=[12, 4], dtype="float32", tensor_parallel_size=tp)
        theirs = block_math(InProjLayout.from_config(cfg), [12, 4], "float32", "float32", tp)
        assert ours.bytes_per_sequence == theirs.bytes_per_sequence


@pytest.mark.vllm
def test_plain_vllm_serve_is_refused_in_the_front_end(tiny_dirs, tmp_path):
    """vLLM's own console script: the plugin's config-map entry refuses the TP size while the config is built,
    before any engine process starts (vLLM prints its traceback; the last line is ours)."""
    import subprocess
    import sys
    from pathlib import Path

    from ghost_vllm.reference import CALIBRATION_TEXT

    pruned = tmp_path / "pruned"
    assert cli(["prune", "--model", str(tiny_dirs / "g2"), "--calibration", str(CALIBRATION_TEXT), "--nsamples", "8",
                "--seq-len", "32", "--out", str(pruned), "--no-progress"]) == 0
    vllm = str(Path(sys.executable).parent / "vllm")
    r = subprocess.run([vllm, "serve", str(pruned), "--tensor-parallel-size", "4", "--dtype", "float32",
                        "--kv-cache-memory-bytes", "3000000"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "RecipeError: --tensor-parallel-size 4: neither divides the model's n_groups 2" in out
    assert "EngineCore" not in out and "Starting vLLM API server" not in out
