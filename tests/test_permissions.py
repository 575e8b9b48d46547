"""Outputs respect the umask as a plain open/mkdir (and save_pretrained) would — a vLLM server or a Prometheus
textfile collector running as another user can read them — while staying atomic (written under a temporary name,
renamed at the end)."""

from __future__ import annotations

import os
import stat

import pytest

from ghost_vllm.cli import main as cli


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoint_and_reports_follow_the_umask(tmp_path, umask):
    from ghost_vllm.commands.io import write_json_atomic
    from ghost_vllm.reference import CALIBRATION_TEXT
    from tests.helpers.tiny import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "dense", seed=3)
    old = os.umask(umask)
    try:
        out = tmp_path / "pruned"
        assert cli(["prune", "--model", str(tmp_path / "dense"), "--calibration", str(CALIBRATION_TEXT),
                    "--nsamples", "4", "--seq-len", "32", "--out", str(out), "--no-progress"]) == 0
        write_json_atomic(tmp_path / "report.json", {"a": 1})
    finally:
        os.umask(old)
    assert _mode(out) == 0o777 & ~umask
    files = [p for p in out.iterdir()]
    assert {p.name for p in files} >= {"model.safetensors", "config.json", "ghost.json"}
    for p in files:
        assert _mode(p) == 0o666 & ~umask, (p.name, oct(_mode(p)))
    assert _mode(tmp_path / "report.json") == 0o666 & ~umask
