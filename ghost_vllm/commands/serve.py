"""``ghost-vllm serve DIR [vLLM args…]``: vLLM's OpenAI-compatible server for a (ghost) checkpoint.

Works where the ``vllm`` console script does not (the CPU wheel's ``vllm serve`` fails with PackageNotFoundError):
it validates a ghost checkpoint first, then replaces this process with
``python -m vllm.entrypoints.openai.api_server --model DIR …``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ghost_vllm.checkpoint import GHOST_FILE, resolve_model_path
from ghost_vllm.errors import GhostError

__all__ = ["server_command", "run_serve"]


def server_command(model: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, *extra]


def run_serve(model: str, extra: list[str]) -> int:
    if importlib.util.find_spec("vllm") is None:
        raise GhostError("serve: vLLM is not installed; pip install 'ghost-vllm[cpu]' (CPU) or 'ghost-vllm[gpu]'")
    model_dir = resolve_model_path(model)
    if (model_dir / GHOST_FILE).is_file():
        from ghost_vllm.plugin.validate import validate_ghost_checkpoint

        validate_ghost_checkpoint(Path(model_dir))
    cmd = server_command(str(model_dir), extra)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 0  # not reached
