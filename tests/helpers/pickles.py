"""Checkpoints that must never be unpickled (for refusal tests)."""

from pathlib import Path

import torch


def write_malicious_pickle(path: Path, key: str, marker: Path) -> None:
    """A torch checkpoint whose unpickling would run `touch marker` (for refusal tests)."""
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({key: Payload()}, path)
