"""The capacity benchmark end to end on the real CPU server (short), and a real Prometheus scraping the server."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from ghost_vllm.cli import main as cli

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    from tests.helpers.tiny import save_tiny_checkpoint
    from ghost_vllm.reference import CALIBRATION_TEXT

    root = tmp_path_factory.mktemp("bench-models")
    # the reference model's shapes (random weights): engine steps cost what they cost in the real benchmark
    save_tiny_checkpoint(root / "dense", seed=31, n_groups=1, hidden_size=256, num_hidden_layers=6, state_size=128,
                         head_dim=64, chunk_size=64)
    assert cli(["prune", "--model", str(root / "dense"), "--calibration", str(CALIBRATION_TEXT), "--nsamples", "8",
                "--seq-len", "32", "--out", str(root / "ghost50"), "--no-progress"]) == 0
    return root / "dense", root / "ghost50"


def test_capacity_command_accounts_for_every_request(pair, tmp_path):
    dense, pruned = pair
    out = tmp_path / "cap"
    textfile = tmp_path / "cap.prom"
    # 7 MiB of state: 4 dense blocks (3 slots) vs 8 pruned (7 slots) at 1,628,160 vs 832,512 B/sequence
    r = subprocess.run(
        [sys.executable, "-m", "ghost_vllm.cli", "bench", "capacity", "--dense", str(dense), "--pruned", str(pruned),
         "--state-memory", "7MiB", "--concurrency", "2,8", "--requests", "12", "--prompt-len", "16",
         "--max-tokens", "256", "--repeats", "1", "--scrape-interval", "0.1", "--out", str(out), "--prometheus-textfile", str(textfile),
         "--no-progress"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "capacity.json").read_text())
    assert len(result["runs"]) == 4
    # the per-request samples live beside the summaries, one line per request, not inside capacity.json
    assert all("samples" not in run for run in result["runs"])
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 * 12 and all(s["ok"] for s in samples)
    for run in result["runs"]:
        mine = [s for s in samples if (s["repeat"], s["variant"], s["concurrency"]) ==
                (run["repeat"], run["variant"], run["concurrency"])]
        assert sum(s["output_tokens"] for s in mine) == run["summary"]["output_tokens"]
    for run in result["runs"]:
        s = run["summary"]
        assert s["sent"] == 12 and s["completed"] + s["failed"] == s["sent"]
        assert s["failed"] == 0
        assert s["output_tokens"] == 12 * 256
        assert s["server_generation_tokens"] == s["output_tokens"]  # the server counted exactly what we received
        assert s["server_request_success"] == s["completed"]
        # never more running than clients or state slots (a scrape can miss the peak, never exceed the cap)
        assert 0 <= s["peak_running"] <= min(run["concurrency"], run["num_gpu_blocks"] - 1)
        # the scraper samples at least once per level, however short; every sample or failure is counted
        assert len(run["metrics_series"]) == s["scrapes"] >= 1, run["scrape_error"]
        assert s["scrape_failures"] == 0, run["scrape_error"]
        assert s["ttft_s_p50"] is not None and s["itl_s_p99"] is not None
    blocks = {run["variant"]: run["num_gpu_blocks"] for run in result["runs"]}
    assert blocks == {"dense": 7 * 2**20 // 1628160, "pruned": 7 * 2**20 // 832512}
    assert max(run["summary"]["peak_running"] for run in result["runs"]) >= 1  # the scraper saw the load
    assert "| 8 | pruned |" in (out / "capacity.md").read_text()
    assert (out / "throughput.png").stat().st_size > 1000 and (out / "latency_p99.png").stat().st_size > 1000
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not installed (Debian package 'prometheus'); .ci/run installs it")
    check = subprocess.run([promtool, "check", "metrics"], input=textfile.read_text(), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def _prom_query(port: int, query: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success"
    return body["data"]["result"]


def test_real_prometheus_scrapes_ghost_and_vllm_metrics(pair, tmp_path):
    from ghost_vllm.loadtest.capacity import make_prompts
    from ghost_vllm.loadtest.load import run_level
    from ghost_vllm.loadtest.server import VLLMServer, free_port
    from ghost_vllm.inspection import inspect_checkpoint

    binary = shutil.which("prometheus")
    if binary is None:
        print("\n!!! SKIPPING LOUDLY: the 'prometheus' binary is missing (apt-get install prometheus) !!!\n")
        pytest.skip("prometheus binary missing: apt-get install prometheus (.ci/run does)")
    _, pruned = pair
    info = inspect_checkpoint(pruned)
    args = ["--dtype", "float32", "--max-model-len", "256", "--enforce-eager", "--kv-cache-memory-bytes", str(8 * 2**20),
            "--served-model-name", "tiny-ghost"]
    with VLLMServer(str(pruned), args, log_path=tmp_path / "server.log") as server:
        prom_port = free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: vllm\n    static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]\n"
        )
        prom = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / "prometheus.log", "w"))
        try:
            prompts = make_prompts(str(pruned), 6, 16, 0)
            samples, _, _ = asyncio.run(run_level(server.base_url, "tiny-ghost", prompts, 10, 3))
            assert all(s.ok for s in samples)
            expected_tokens = sum(s.output_tokens for s in samples)
            deadline = time.monotonic() + 60
            size = tokens = None
            while time.monotonic() < deadline:
                try:
                    size = _prom_query(prom_port, 'ghost:state_size{variant="pruned"}')
                    tokens = _prom_query(prom_port, "sum(vllm:generation_tokens_total)")
                    if size and tokens and float(tokens[0]["value"][1]) == expected_tokens:
                        break
                except OSError:
                    pass
                time.sleep(1)
            assert size and float(size[0]["value"][1]) == info["state_size"]
            assert size[0]["metric"]["model_name"] == "tiny-ghost"
            assert tokens and float(tokens[0]["value"][1]) == expected_tokens
        finally:
            prom.terminate()
            prom.wait(timeout=30)


def test_saturation_warning_names_levels_that_did_not_load_the_engine():
    """A level whose scraped peak stayed under half of min(clients, slots) is flagged; a loaded one is not."""
    from ghost_vllm.loadtest.capacity import saturation_warnings

    def level(dense_peak, pruned_peak):
        return {"dense": {"peak_running": dense_peak, "num_gpu_blocks": 16},
                "pruned": {"peak_running": pruned_peak, "num_gpu_blocks": 31}, "ratio": {}}

    result = {"summary": {"levels": {"4": level(4, 4), "32": level(0, 3), "64": level(15, 30)}}}
    warnings = saturation_warnings(result)
    assert len(warnings) == 2
    assert warnings[0].startswith("concurrency 32, dense: at most 0 requests running of 15 possible")
    assert warnings[1].startswith("concurrency 32, pruned: at most 3 requests running of 30 possible")
