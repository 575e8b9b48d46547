"""Shared fixtures: tiny random Mamba2 checkpoints with a matching tokenizer, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[int, Path]:
    """{n_groups: checkpoint dir} for n_groups 1 and 2 (state_size 16, 2 layers, fp32)."""
    from tests.helpers.tiny import save_tiny_checkpoint

    out = {}
    for g in (1, 2):
        d = tmp_path_factory.mktemp(f"tiny-g{g}")
        save_tiny_checkpoint(d, seed=g, n_groups=g)
        out[g] = d
    return out


@pytest.fixture(scope="session")
def calib_text(tmp_path_factory) -> Path:
    """A small slice of the bundled held-out text as a calibration file."""
    from ghost_vllm.reference import CALIBRATION_TEXT

    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(CALIBRATION_TEXT.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    return p

