"""A real OpenAI-compatible vLLM server on 127.0.0.1 serving a ghost checkpoint, driven by the official openai
client; /metrics carries the ghost: metrics with the values `ghost-vllm inspect` computes; the server stops cleanly.
The first checkpoint asks for the int8 SSM state, so the server path (and its metrics) run that format too."""

from __future__ import annotations

import re

import pytest

from ghost_vllm.cli import main as cli
from ghost_vllm.loadtest.server import VLLMServer

pytestmark = pytest.mark.vllm

KV_BYTES = 32 * 2**20


def _samples(text: str, name: str) -> dict[str, float]:
    """{labels string: value} of one metric family in Prometheus text format."""
    out = {}
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", text, re.M):
        out[m.group(1) or ""] = float(m.group(2))
    return out


def test_openai_client_and_ghost_metrics(tmp_path):
    import openai

    from ghost_vllm.inspection import inspect_checkpoint
    from tests.helpers.tiny import save_tiny_checkpoint
    from ghost_vllm.reference import CALIBRATION_TEXT

    dense, pruned = tmp_path / "dense", tmp_path / "ghost50"
    save_tiny_checkpoint(dense, seed=21, n_groups=1)
    assert cli(["prune", "--model", str(dense), "--calibration", str(CALIBRATION_TEXT), "--nsamples", "8",
                "--seq-len", "32", "--out", str(pruned), "--no-progress", "--allocation", "uniform",
                "--state-dtype", "int8"]) == 0
    info = inspect_checkpoint(pruned)
    assert info["ssm_dtype"] == "int8" and info["ssm_dtype_original"] == "float32"

    server = VLLMServer(str(pruned), ["--dtype", "float32", "--max-model-len", "256", "--enforce-eager",
                                      "--kv-cache-memory-bytes", str(KV_BYTES), "--served-model-name", "tiny-ghost"],
                        log_path=tmp_path / "server.log")
    with server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", timeout=60)
        r = client.completions.create(model="tiny-ghost", prompt="The history of", max_tokens=12, temperature=0)
        assert r.choices[0].text and r.usage.completion_tokens == 12
        chunks = list(client.completions.create(model="tiny-ghost", prompt="The history of", max_tokens=12,
                                                temperature=0, stream=True))
        streamed = "".join(c.choices[0].text for c in chunks if c.choices)
        assert streamed == r.choices[0].text  # greedy: streaming and non-streaming agree
        text = server.metrics()
    assert server.returncode is not None and server.returncode in (0, -2, 130), server.returncode

    label = 'model_name="tiny-ghost"'
    size = _samples(text, "ghost:state_size")
    assert size[f'{{{label},variant="original"}}'] == info["state_size_original"] == 16
    assert size[f'{{{label},variant="pruned"}}'] == info["state_size"] == 8
    per_seq = _samples(text, "ghost:state_bytes_per_sequence")
    assert per_seq[f'{{{label},variant="pruned"}}'] == info["bytes_per_sequence"]
    assert per_seq[f'{{{label},variant="original"}}'] == info["bytes_per_sequence_original"]
    assert _samples(text, "ghost:state_reduction_ratio")[f"{{{label}}}"] == pytest.approx(info["state_reduction_ratio"])
    slots = _samples(text, "ghost:state_slots")[f"{{{label}}}"]
    blocks = int(re.search(r'vllm:cache_config_info\{[^}]*num_gpu_blocks="(\d+)"', text).group(1))
    assert slots == blocks - 1 == KV_BYTES // info["bytes_per_sequence"] - 1
    dense_slots = _samples(text, "ghost:dense_equivalent_state_slots")[f"{{{label}}}"]
    assert dense_slots == KV_BYTES // info["bytes_per_sequence_original"] - 1
    assert _samples(text, "ghost:generation_tokens_total")[f"{{{label}}}"] == 24
    vllm_tokens = sum(_samples(text, "vllm:generation_tokens_total").values())
    assert vllm_tokens == 24
    for name in ("ghost:num_requests_running", "ghost:num_requests_waiting",
                 "ghost:generation_throughput_tokens_per_second"):
        assert f"{{{label}}}" in _samples(text, name), name
    assert "# TYPE ghost:generation_tokens_total counter" in text or "# TYPE ghost:generation_tokens counter" in text


def test_vllm_serve_console_script_with_a_per_layer_checkpoint(tmp_path):
    """`vllm serve DIR` — vLLM's own console script, with the CPU wheel (the set-up's metadata alias) — serves a
    checkpoint with per-layer state sizes: the openai client gets completions, and the ghost: metrics carry the real
    per-sequence bytes (Σ_l bytes_l) and the exact slot count."""
    import openai

    from ghost_vllm.inspection import inspect_checkpoint
    from tests.helpers.tiny import save_tiny_checkpoint
    from ghost_vllm.reference import CALIBRATION_TEXT

    dense, pruned = tmp_path / "dense", tmp_path / "layers"
    save_tiny_checkpoint(dense, seed=22, n_groups=1, num_hidden_layers=4)
    assert cli(["prune", "--model", str(dense), "--calibration", str(CALIBRATION_TEXT), "--nsamples", "8",
                "--seq-len", "32", "--multiple-of", "4", "--state-sizes", "4,16,8,12", "--out", str(pruned),
                "--no-progress"]) == 0
    info = inspect_checkpoint(pruned)
    server = VLLMServer(str(pruned), ["--dtype", "float32", "--max-model-len", "256", "--enforce-eager",
                                      "--kv-cache-memory-bytes", str(KV_BYTES), "--served-model-name", "layers"],
                        log_path=tmp_path / "server.log", launcher="vllm")
    with server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", timeout=60)
        r = client.completions.create(model="layers", prompt="The history of", max_tokens=8, temperature=0)
        assert r.usage.completion_tokens == 8
        text = server.metrics()
    label = '{model_name="layers",variant="pruned"}'
    assert _samples(text, "ghost:state_bytes_per_sequence")[label] == info["bytes_per_sequence"] == sum(
        info["bytes_per_layer"])
    blocks = int(re.search(r'vllm:cache_config_info\{[^}]*num_gpu_blocks="(\d+)"', text).group(1))
    assert blocks == KV_BYTES // info["bytes_per_sequence"]
    assert _samples(text, "ghost:state_slots")['{model_name="layers"}'] == blocks - 1
