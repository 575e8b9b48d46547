"""Every command checks its paths and names before any slow work (an engine start is ~40 s here, an evaluation ~45 s)
and fails in one line, exit 2 — one test for the class, over every command that takes a model or a text source;
`serve --help` prints serve's own usage; a reader that closes the pipe early ends the command quietly."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

MISSING = "/nonexistent-model-dir"


@pytest.mark.parametrize("args", [
    ["serve", MISSING],
    ["slots", "reference", MISSING],
    ["compare", "reference", MISSING, "--data", "reference-valid"],
    ["compare", "reference", "--data", "/nonexistent.txt"],
    ["eval", MISSING, "--data", "reference-valid"],
    ["eval", "reference", "--data", "/nonexistent.txt"],
    ["inspect", MISSING],
    ["bench", "capacity", "--dense", "reference", "--pruned", MISSING],
    ["plan", MISSING, "--cache-memory", "64MiB"],
], ids=lambda a: " ".join(a[:2]))
def test_missing_inputs_fail_in_one_line_before_slow_work(args):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "ghost_vllm.cli", *args], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode == 2, r.stderr[-1500:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-1500:]
    assert "nonexistent" in lines[0]
    assert elapsed < 20, f"{elapsed:.1f} s: checked after slow work"  # imports only; no engine, no evaluation


def test_serve_help_is_serves_own():
    r = subprocess.run([sys.executable, "-m", "ghost_vllm.cli", "serve", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: ghost-vllm serve MODEL")
    assert "--auto-max-num-seqs" in r.stdout and "api_server --help" in r.stdout


def test_a_closed_pipe_ends_quietly():
    # ~250 KB of JSON: more than a pipe buffers, so the writer is still writing when the reader leaves
    proc = subprocess.Popen([sys.executable, "-m", "ghost_vllm.cli", "plan", *["reference"] * 100,
                             "--cache-memory", "64MiB", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()  # the reader leaves, as `| head -c 10` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == "", err
