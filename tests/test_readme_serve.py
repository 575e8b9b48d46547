"""The serve commands the README shows for CPU run as written — no cache-size flag — on a fresh machine: each starts
(ghost_vllm chooses a state-cache size that fits and says what it holds), answers the openai client, and exports
ghost: metrics whose slot count is what that size holds by the planner's arithmetic."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from ghost_vllm.loadtest.server import VLLMServer
from ghost_vllm.cli import main as cli

pytestmark = pytest.mark.vllm

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_serve_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- serve-commands:begin -->\n```bash\n(.*?)```\n<!-- serve-commands:end -->", text, re.S)
    assert block, "README.md lost its serve-commands block"
    return [ln.split("  #")[0].strip() for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_lists_both_serve_commands():
    cmds = readme_serve_commands()
    assert [c.split()[0] for c in cmds] == ["ghost-vllm", "vllm"]
    for c in cmds:
        assert "--kv-cache-memory-bytes" not in c and "VLLM_CPU_KVCACHE_SPACE" not in c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory where ./build/reference-ghost50 exists, as after `make run` (the default recipe, fewer windows)."""
    root = tmp_path_factory.mktemp("readme")
    assert cli(["prune", "--model", "reference", "--calibration", "reference", "--nsamples", "16", "--seq-len", "64",
                "--sparsity", "0.5", "--out", str(root / "build" / "reference-ghost50"), "--no-progress"]) == 0
    return root


@pytest.mark.parametrize("index", [0, 1])
def test_readme_serve_command_runs_as_written(workdir, index, tmp_path):
    import openai

    from ghost_vllm.inspection import inspect_checkpoint

    cmd = readme_serve_commands()[index]
    argv = shlex.split(cmd)
    port = int(argv[argv.index("--port") + 1])
    argv[0] = str(Path(sys.executable).parent / argv[0])  # this environment's console scripts
    log = tmp_path / "server.log"
    with VLLMServer("", command=argv, port=port, cwd=workdir, log_path=log) as server:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=120)
        model = client.models.list().data[0].id
        r = client.completions.create(model=model, prompt="The history of", max_tokens=8, temperature=0)
        assert r.usage.completion_tokens == 8
        metrics = server.metrics()
    text = log.read_text()
    said = re.findall(r"using --kv-cache-memory-bytes (\d+) \([^)]*\), which holds ([\d,]+) concurrent sequences", text)
    assert len(said) == 1, text[-3000:]  # one line, before the engine started
    memory, holds = int(said[0][0]), int(said[0][1].replace(",", ""))
    per_seq = inspect_checkpoint(workdir / "build" / "reference-ghost50", dtype="float32")["bytes_per_sequence"]
    blocks = int(re.search(r'vllm:cache_config_info\{[^}]*num_gpu_blocks="(\d+)"', metrics).group(1))
    assert blocks == memory // per_seq and holds == blocks - 1
    slots = re.search(r'^ghost:state_slots\{[^}]*\} ([\d.]+)$', metrics, re.M)
    assert slots and float(slots.group(1)) == holds
