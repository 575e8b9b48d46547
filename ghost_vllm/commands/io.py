"""Small atomic file writers."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ghost_vllm.checkpoint import apply_umask
from ghost_vllm.errors import GhostError

__all__ = ["write_text_atomic", "write_json_atomic", "resolve_device"]


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        apply_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def resolve_device(name: str) -> str:
    """``--device`` auto | cpu | cuda → the device to use (one line when CUDA is asked for and absent)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise GhostError("--device cuda: no CUDA device is visible; use --device cpu")
    return name
