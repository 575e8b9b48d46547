"""Reliability of serving: overload with disconnecting clients (nothing lost, nothing hangs, the server keeps
serving), and two vLLM processes loading the plugin at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from ghost_vllm.loadtest.promtext import metric_sum, parse_metrics
from ghost_vllm.loadtest.server import VLLMServer
from ghost_vllm.cli import main as cli
from tests.reliability_counts import record

pytestmark = pytest.mark.vllm

DEADLINE_S = 180.0


@pytest.fixture(scope="module")
def pruned_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "reference-ghost50"
    assert cli(["prune", "--model", "reference", "--calibration", "reference", "--nsamples", "16", "--seq-len", "64",
                "--multiple-of", "8", "--out", str(out), "--no-progress"]) == 0
    return out


async def _overload(base_url: str, prompts: list[list[int]], n_complete: int, n_disconnect: int) -> dict:
    import httpx
    import openai

    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=DEADLINE_S,
                                http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=64)))

    async def full(i):
        try:
            async with asyncio.timeout(DEADLINE_S):
                stream = await client.completions.create(model="ref", prompt=prompts[i], max_tokens=48, temperature=0,
                                                         stream=True, extra_body={"ignore_eos": True},
                                                         stream_options={"include_usage": True})
                tokens = 0
                async for chunk in stream:
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
                return "completed" if tokens == 48 else "short"
        except TimeoutError:
            return "hung"
        except openai.APIStatusError as e:  # an HTTP error the client sees
            return f"http_{e.status_code}"

    async def disconnect(i):
        async with asyncio.timeout(DEADLINE_S):
            stream = await client.completions.create(model="ref", prompt=prompts[i], max_tokens=400, temperature=0,
                                                     stream=True, extra_body={"ignore_eos": True})
            got = 0
            async for _ in stream:
                got += 1
                if got >= 3:
                    break
            await stream.close()  # the client goes away mid-stream
            return "disconnected"

    t0 = time.monotonic()
    results = await asyncio.gather(*[full(i) for i in range(n_complete)],
                                   *[disconnect(n_complete + i) for i in range(n_disconnect)])
    await client.close()
    return {"results": results, "elapsed_s": time.monotonic() - t0}


def test_overload_with_disconnects_loses_nothing(pruned_reference, tmp_path):
    from ghost_vllm.loadtest.capacity import make_prompts
    from ghost_vllm.inspection import inspect_checkpoint

    per_seq = inspect_checkpoint(pruned_reference)["bytes_per_sequence"]
    slots = 4
    memory = (slots + 1) * per_seq + per_seq // 2  # slots + vLLM's null block
    n_complete, n_disconnect = 4 * slots, 4
    prompts = make_prompts(str(pruned_reference), n_complete + n_disconnect + 1, 32, 7)
    args = ["--dtype", "float32", "--max-model-len", "512", "--enforce-eager", "--kv-cache-memory-bytes", str(memory),
            "--served-model-name", "ref"]
    with VLLMServer(str(pruned_reference), args, log_path=tmp_path / "server.log") as server:
        before = parse_metrics(server.metrics())
        out = asyncio.run(_overload(server.base_url, prompts, n_complete, n_disconnect))
        res = out["results"]
        assert "hung" not in res and len(res) == n_complete + n_disconnect
        assert all(r in ("completed", "disconnected") or r.startswith("http_") for r in res), res
        # the server keeps serving
        import openai

        again = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", timeout=60).completions.create(
            model="ref", prompt=prompts[-1], max_tokens=8, temperature=0)
        assert again.usage.completion_tokens == 8
        # the server's counters trail the last response slightly: wait (bounded) until the completed ones are in
        deadline = time.monotonic() + 30
        while True:
            after = parse_metrics(server.metrics())
            seen = metric_sum(after, "vllm:request_success_total") - metric_sum(before, "vllm:request_success_total")
            if seen >= res.count("completed") + 1 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        blocks = next(int(lab["num_gpu_blocks"]) for n, lab, _ in after if n == "vllm:cache_config_info")
    assert blocks - 1 == slots
    completed = res.count("completed")
    failed = sum(r.startswith("http_") for r in res)
    disconnected = res.count("disconnected")
    sent = n_complete + n_disconnect + 1
    delta = {reason: metric_sum(after, "vllm:request_success_total", finished_reason=reason)
             - metric_sum(before, "vllm:request_success_total", finished_reason=reason)
             for reason in ("stop", "length", "abort", "error", "repetition")}
    finished = sum(delta.values())
    # vllm:request_success_total counts every request that finished; a disconnected stream is aborted (and not
    # counted) unless its generation finished before the server noticed the client had gone
    assert completed + 1 <= finished <= completed + 1 + disconnected
    finished_disconnects = finished - (completed + 1)
    assert finished + failed + (disconnected - finished_disconnects) == sent
    assert failed == 0
    record("overload", state_slots=slots, concurrent_requests=n_complete, disconnecting_clients=n_disconnect,
           sent=sent, completed=completed + 1, failed_http=failed, disconnected=disconnected, hung=0,
           disconnected_aborted=disconnected - finished_disconnects, disconnected_but_finished=finished_disconnects,
           server_request_success_by_reason={k: int(v) for k, v in delta.items()}, elapsed_s=round(out["elapsed_s"], 1))


def test_two_processes_load_the_plugin_at_once(pruned_reference, tmp_path):
    import concurrent.futures
    import shutil

    import openai

    from ghost_vllm.reference import MODEL_DIR

    dense = tmp_path / "dense"
    shutil.copytree(MODEL_DIR, dense)  # a stock Mamba2ForCausalLM checkpoint, served with the plugin installed
    args = ["--dtype", "float32", "--max-model-len", "256", "--enforce-eager", "--kv-cache-memory-bytes",
            str(16 * 2**20), "--served-model-name", "m"]
    servers = [VLLMServer(str(pruned_reference), args, log_path=tmp_path / "a.log"),
               VLLMServer(str(dense), args, log_path=tmp_path / "b.log")]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        started = list(pool.map(lambda s: s.__enter__(), servers))  # both start at the same time
    try:
        for s in started:
            r = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key="unused", timeout=60).completions.create(
                model="m", prompt=" The city of", max_tokens=6, temperature=0)
            assert r.usage.completion_tokens == 6
        ghost_metrics = started[0].metrics()
        stock_metrics = started[1].metrics()
        assert "ghost:state_size" in ghost_metrics
        assert "ghost:" not in stock_metrics  # the stat logger stays inert for other architectures
    finally:
        for s in servers:
            s.stop()
    record("plugin_isolation", concurrent_plugin_processes=2, both_up=1)
